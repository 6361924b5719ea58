"""The catalog: the versioned Parquet lake, training runs and exported models."""
