"""Parts of the command line (`python -m engine`, the `engine` console script): exit codes,
settings from flags / ENGINE_* variables / a TOML file, value encodings and backups."""
