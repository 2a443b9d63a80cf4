"""Table files of COVAR folders (moved to :mod:`captum_clip._tables`, re-exported here)."""

from captum_clip._tables import find_table, has_parquet, read_table, slug, table_path, write_table

__all__ = ["find_table", "has_parquet", "read_table", "slug", "table_path", "write_table"]
