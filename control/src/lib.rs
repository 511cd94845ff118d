//! cloudphone library.
