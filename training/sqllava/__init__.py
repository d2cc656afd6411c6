"""Reference SQ-LLaVA modules (PyTorch) shared by export, conversion, training and evaluation."""
