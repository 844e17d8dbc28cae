//! sam-models (being built).
