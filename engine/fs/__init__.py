"""The file-system namespace over transactions: inodes, directory entries, file chunks,
rename without cycles (engine.fs.filesystem; key layout in engine.fs.layout; the client
protocol in engine.fs.client). docs/filesystem.md describes it."""

from engine.fs.client import Transaction, TransactionalClient
from engine.fs.filesystem import FileStat, FileSystem
from engine.fs.layout import CHUNK_SIZE, MAX_FILE_SIZE, NAME_MAX

__all__ = ["CHUNK_SIZE", "FileStat", "FileSystem", "MAX_FILE_SIZE", "NAME_MAX", "Transaction",
           "TransactionalClient"]
