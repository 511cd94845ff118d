//! Android image formats, parsed and written exactly.
