"""Extra outputs of the open_clip backbone that some methods need (one file each, registered in
``bench.registry.CLIP_EXTRAS``, requested with the backbone's ``extras`` option)."""
