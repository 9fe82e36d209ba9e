//! Shared helpers for the workspace-level tests and benchmarks.
