"""What the CLIP methods share: prompt ensembles and the text tower (``prompts``), per-layer linear
adapters with the official checkpoint mapping (``adapters``), and auxiliary-dataset training with the
field's focal + dice losses (``auxiliary``). Not a registered plugin (leading underscore)."""
