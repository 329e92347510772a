"""What the gate's test modules build alike: a gate at the tiny HySAC's text threshold, a UNet call counter."""

from safe_encoders.hysac import SafetyGate


def make_gate(classifier, prompts, **kwargs):
    """A gate whose text threshold separates the tiny HySAC's safe and unsafe prompts (conftest's `prompts`)."""
    kwargs.setdefault("image_threshold", 1e9)  # images pass unless a test says otherwise
    return SafetyGate(classifier=classifier, text_threshold=prompts.threshold, **kwargs)


def unet_runs(pipe):
    """A list that grows by one at each UNet forward of `pipe` (0 afterwards: the call was refused)."""
    runs = []
    pipe.unet.register_forward_pre_hook(lambda *_: runs.append(1))
    return runs
