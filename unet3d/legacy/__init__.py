"""The legacy Keras-2 port's API, kept under its names as thin shims over this package.

`unet3d.legacy.prediction`: `predict`, `patch_wise_prediction`, `get_prediction_labels`,
`prediction_to_image`, `run_validation_cases` (also importable from `unet3d.prediction`).
`unet3d.legacy.training`: `get_callbacks`, `train_model` (also importable from `unet3d.training`).
`unet3d.legacy.data`: `create_data_file`, `add_data_to_storage`, writing the port's store layout
(also importable from `unet3d.data`).
"""
