"""cosmos-mongo: a MongoDB document store for NVIDIA Cosmos prompts, runs and enhancements."""

import logging

from cosmos_mongo.config import Settings
from cosmos_mongo.errors import (
    ConflictError,
    CosmosMongoError,
    EnhancementError,
    InvalidDocumentError,
    InvalidInputError,
    NotFoundError,
    PromptNotFoundError,
    ReadOnlyError,
    RunNotFoundError,
    StorageError,
)
from cosmos_mongo.importer import ImportReport
from cosmos_mongo.models import (
    DeletionPreview,
    DeletionResult,
    EnhancementDetails,
    EnhancementOutputs,
    EnhancementResult,
    IndexReport,
    Lineage,
    LineageEdge,
    Listing,
    MigrationReport,
    Prompt,
    RepairReport,
    Run,
    SkippedDocument,
    VerificationReport,
)
from cosmos_mongo.store import AsyncCosmosStore, CosmosStore
from cosmos_mongo.validation import ModelType, RunStatus

__version__ = "0.1.0"

# A library configures no output: without this, Python's last-resort handler would print the
# library's warnings (documents left out of a listing) to stderr beside the CLI's own line.
logging.getLogger("cosmos_mongo").addHandler(logging.NullHandler())

__all__ = [
    "AsyncCosmosStore",
    "ConflictError",
    "CosmosMongoError",
    "CosmosStore",
    "DeletionPreview",
    "DeletionResult",
    "EnhancementDetails",
    "EnhancementError",
    "EnhancementOutputs",
    "EnhancementResult",
    "ImportReport",
    "IndexReport",
    "InvalidDocumentError",
    "InvalidInputError",
    "Lineage",
    "LineageEdge",
    "Listing",
    "MigrationReport",
    "ModelType",
    "NotFoundError",
    "Prompt",
    "PromptNotFoundError",
    "ReadOnlyError",
    "RepairReport",
    "Run",
    "RunNotFoundError",
    "RunStatus",
    "Settings",
    "SkippedDocument",
    "StorageError",
    "VerificationReport",
    "__version__",
]
