"""Safe-CLIP trainer (run from a checkout: ``python -m train {demo,safeclip,export}``).

losses: the Safe-CLIP loss terms; retrieval: recall and unsafe-share metrics; data: the quadruplet
interface; synthetic: the offline synthetic world; config: typed run configs and YAML recipes;
model: LoRA set-up and frozen references; loop: the accelerate training loop; export: merge and
write the encoders with ``safe_encoders.export_encoder``; demo: the end-to-end offline demo.
"""
