"""cosmos-mongo: a MongoDB document store for NVIDIA Cosmos prompts, runs and enhancements."""

from cosmos_mongo.errors import (
    ConflictError,
    CosmosMongoError,
    InvalidInputError,
    NotFoundError,
    PromptNotFoundError,
    ReadOnlyError,
    RunNotFoundError,
    StorageError,
)
from cosmos_mongo.models import DeletionPreview, DeletionResult, Prompt, Run
from cosmos_mongo.store import AsyncCosmosStore, CosmosStore

__version__ = "0.1.0"

__all__ = [
    "AsyncCosmosStore",
    "ConflictError",
    "CosmosMongoError",
    "CosmosStore",
    "DeletionPreview",
    "DeletionResult",
    "InvalidInputError",
    "NotFoundError",
    "Prompt",
    "PromptNotFoundError",
    "ReadOnlyError",
    "Run",
    "RunNotFoundError",
    "StorageError",
    "__version__",
]
