"""Readers of evaluation data: prompt sets and files, ViSU quadruplets, the offline synthetic world."""
