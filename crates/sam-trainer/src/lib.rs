//! sam-trainer (being built).
