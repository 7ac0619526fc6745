"""Use a trained model: its model applied to images it has never seen, from Python and the command line.

::

    vaekit.use.inputs   images (a folder, a file, an array, a run's split) prepared exactly as the run's data were
    vaekit.use.latent   posterior means, reconstructions and interpolations, a batch at a time
    vaekit.use.outputs  the files the commands write: encodings as .npy/.csv/.parquet tables, PNG images
    vaekit.use.onnx     the encoder and decoder as ONNX files, checked against PyTorch with ONNX Runtime

The encode, reconstruct and interpolate operations are methods of :class:`vaekit.Run` (``run.encode(images)``...),
which is where most users meet them; this package is what they and the ``vaekit encode``/``reconstruct``/
``interpolate``/``export`` commands call.
"""
