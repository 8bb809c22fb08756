"""Small array utilities shared by training and prediction (patch grids)."""
