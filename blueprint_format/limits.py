"""Reader limits (SPEC.md, "Limits"). A reader refuses documents beyond them with a code."""

#: Maximum size of a blueprint document in bytes.
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
#: Maximum nesting depth of arrays and objects (the top-level object is depth 1).
MAX_DEPTH = 32
#: Maximum number of entries in `modules`.
MAX_MODULES = 100_000
#: Largest integer a document may hold (2**53 - 1, exactly representable as a double).
MAX_SAFE_INTEGER = 2**53 - 1
