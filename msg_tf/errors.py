"""Exceptions shared by the dataset modules, kept free of TensorFlow imports.

The dataset tool's worker processes raise DatasetError and import no TensorFlow,
so it cannot live in `msg_tf.tfrecord_format`, which re-exports it.
"""


class DatasetError(ValueError):
    """A problem with a dataset or its input images that the user must fix."""
