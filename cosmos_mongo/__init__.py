"""cosmos-mongo: a MongoDB document store for NVIDIA Cosmos prompts, runs and enhancements."""

from cosmos_mongo.config import Settings
from cosmos_mongo.errors import (
    ConflictError,
    CosmosMongoError,
    EnhancementError,
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
    MigrationReport,
    Prompt,
    RepairReport,
    Run,
    VerificationReport,
)
from cosmos_mongo.store import AsyncCosmosStore, CosmosStore

__version__ = "0.1.0"

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
    "InvalidInputError",
    "Lineage",
    "LineageEdge",
    "MigrationReport",
    "NotFoundError",
    "Prompt",
    "PromptNotFoundError",
    "ReadOnlyError",
    "RepairReport",
    "Run",
    "RunNotFoundError",
    "Settings",
    "StorageError",
    "VerificationReport",
    "__version__",
]
