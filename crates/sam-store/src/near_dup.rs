//! Near-duplicate detection (MinHash/LSH) over stored examples.
