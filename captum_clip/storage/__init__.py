"""Storage of results: resumable, model-identified, safe with any number of writers.

One mechanism for every long run that writes results as it goes (``covar eval`` and the
retrieval harness resume through it; ``grounding`` writes its table with
:func:`atomic_write`, it does not resume yet): results go to ``<out>/parts/<group>/...`` in parts,
each part written atomically (:func:`atomic_write`: a temporary file, then a rename) under
a name no other writer uses; a part records (or is keyed by) the identity of what computed
it (:mod:`~captum_clip.storage.identity`: model weights, files, settings), and a rerun
reads the parts back, checked, and computes only what is missing.

* Rows -- :class:`ResumableTable` (:mod:`~captum_clip.storage.tables`): parts of a table
  checked against a :class:`TableSchema`, merged under a folder lock
  (:func:`folder_lock`) into ``<out>/<stem>.parquet`` (``.csv`` without pyarrow).
* Tensors -- :class:`TensorParts` (:mod:`~captum_clip.storage.parts`): one ``.pt`` per
  ``(group, index)`` holding the run's identity, read with ``weights_only=True``.
* Files in -- :func:`read_image` (:mod:`~captum_clip.storage.images`): user images with
  errors that name the file.

A file that fails its checks raises :class:`CorruptFileError` (a ``ValueError``) naming
it; a lock held too long by another process raises :class:`OutputBusyError`.

Which to use for a new resumable command: rows of numbers per item (image, word, model)
-> :class:`ResumableTable` with the model's identity in a key column; tensors per batch
-> :class:`TensorParts` with :func:`identity_hash` of model digest + settings.
"""

from captum_clip.storage.files import (
    CorruptFileError,
    atomic_write,
    find_table,
    has_parquet,
    read_table,
    slug,
    table_path,
    write_table,
)
from captum_clip.storage.identity import file_digest, identity_hash, state_dict_digest, text_hash
from captum_clip.storage.images import read_image
from captum_clip.storage.locks import OutputBusyError, folder_lock
from captum_clip.storage.parts import TensorParts
from captum_clip.storage.tables import (
    CorruptTableError,
    ResumableTable,
    TableSchema,
    group_dir_name,
)

__all__ = [
    "CorruptFileError",
    "CorruptTableError",
    "OutputBusyError",
    "ResumableTable",
    "TableSchema",
    "TensorParts",
    "atomic_write",
    "file_digest",
    "find_table",
    "folder_lock",
    "group_dir_name",
    "has_parquet",
    "identity_hash",
    "read_image",
    "read_table",
    "slug",
    "state_dict_digest",
    "table_path",
    "text_hash",
    "write_table",
]
