"""pydantic-toast: Pydantic models whose data lives in external storage.

``model_dump()`` stores the model and returns a small reference; ``model_validate()`` takes
the reference and loads the model back (the claim-check pattern)::

    from pydantic_toast import ExternalBaseModel, ExternalConfigDict

    class Order(ExternalBaseModel):
        product: str
        quantity: int
        model_config = ExternalConfigDict(storage="sqlite:///shop.db")

    reference = Order(product="tea", quantity=2).model_dump()
    order = Order.model_validate(reference)
"""

import logging as _logging
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _distribution_version

from pydantic_toast._boundary import AcceptReference, Ref
from pydantic_toast._collections import Page, acount, adelete, apage, count, delete, page
from pydantic_toast._config import ExternalConfigDict
from pydantic_toast._encryption import EncryptionKeys
from pydantic_toast._exceptions import (
    ConcurrencyError,
    EncryptionKeyError,
    ExternalStorageError,
    InvalidReferenceError,
    OutcomeUnknownError,
    RecordNotFoundError,
    StorageAuthenticationError,
    StorageBusyError,
    StorageConfigurationError,
    StorageConnectionError,
    StorageConnectTimeoutError,
    StorageOperationError,
    StoragePoolTimeoutError,
    StorageSchemaError,
    StorageTimeoutError,
    StorageUsageError,
    StorageValidationError,
    StoredDataError,
    UnknownSchemeError,
    UnreadReferrersError,
)
from pydantic_toast._expanded import Expanded, to_data
from pydantic_toast._expiry import apurge_expired, purge_expired
from pydantic_toast._model import ExternalBaseModel
from pydantic_toast._orphans import (
    OrphanReport,
    afind_orphaned_payloads,
    afind_orphans,
    find_orphaned_payloads,
    find_orphans,
)
from pydantic_toast._ownership import Owned
from pydantic_toast._records import PageCursor, RecordKey, StoredRecord
from pydantic_toast._reencrypt import ReencryptReport, areencrypt, reencrypt
from pydantic_toast._reference import ExternalReference
from pydantic_toast._saving import last_write_wins
from pydantic_toast._signing import SignedReference, SigningKeys, sign_reference, verify_reference
from pydantic_toast._trees import adump, avalidate, dump, validate
from pydantic_toast._url import StorageURL
from pydantic_toast.backends.base import Capability, StorageBackend
from pydantic_toast.backends.postgresql_replicas import read_primary
from pydantic_toast.runtime.blocking import BlockingStorageCallWarning
from pydantic_toast.runtime.lifecycle import aclose_storage, close_storage
from pydantic_toast.runtime.storage import (
    Storage,
    current_storage,
    register_backend,
    unregister_backend,
    use_engine,
)
from pydantic_toast.runtime.telemetry import disable_telemetry, enable_telemetry
from pydantic_toast.runtime.transaction import transaction

# A library logs, the application decides where it goes: without this, Python's last-resort
# handler would print the boundary's warnings to stderr of every program.
_logging.getLogger("pydantic_toast").addHandler(_logging.NullHandler())

try:
    __version__: str = _distribution_version("pydantic-toast")
except _PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AcceptReference",
    "BlockingStorageCallWarning",
    "Capability",
    "ConcurrencyError",
    "EncryptionKeyError",
    "EncryptionKeys",
    "Expanded",
    "ExternalBaseModel",
    "ExternalConfigDict",
    "ExternalReference",
    "ExternalStorageError",
    "InvalidReferenceError",
    "OrphanReport",
    "OutcomeUnknownError",
    "Owned",
    "Page",
    "PageCursor",
    "RecordKey",
    "RecordNotFoundError",
    "ReencryptReport",
    "Ref",
    "SignedReference",
    "SigningKeys",
    "Storage",
    "StorageAuthenticationError",
    "StorageBackend",
    "StorageBusyError",
    "StorageConfigurationError",
    "StorageConnectTimeoutError",
    "StorageConnectionError",
    "StorageOperationError",
    "StoragePoolTimeoutError",
    "StorageSchemaError",
    "StorageTimeoutError",
    "StorageURL",
    "StorageUsageError",
    "StorageValidationError",
    "StoredDataError",
    "StoredRecord",
    "UnknownSchemeError",
    "UnreadReferrersError",
    "aclose_storage",
    "acount",
    "adelete",
    "adump",
    "afind_orphaned_payloads",
    "afind_orphans",
    "apage",
    "apurge_expired",
    "areencrypt",
    "avalidate",
    "close_storage",
    "count",
    "current_storage",
    "delete",
    "disable_telemetry",
    "dump",
    "enable_telemetry",
    "find_orphaned_payloads",
    "find_orphans",
    "last_write_wins",
    "page",
    "purge_expired",
    "read_primary",
    "reencrypt",
    "register_backend",
    "sign_reference",
    "to_data",
    "transaction",
    "unregister_backend",
    "use_engine",
    "validate",
    "verify_reference",
]
