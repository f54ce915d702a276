"""Classification on frozen features: class folders (ImageFolder layout) and N-way K-shot episodes."""
