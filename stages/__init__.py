"""The DVC stage commands: one small module per stage, and the ``cellpipe`` CLI that dispatches to them."""
