"""Reader limits (SPEC.md, "Limits"). A reader refuses documents beyond them with a code."""

#: Maximum size of a blueprint document in bytes.
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
#: Maximum nesting depth of arrays and objects (the top-level object is depth 1).
MAX_DEPTH = 32
#: Maximum number of JSON values in a document (objects, arrays, strings, numbers and literals at
#: any depth; member names do not count). Bounds the memory and time of reading before parsing: a
#: 64 MiB document of `{}` or `0` values is refused by counting, not by building millions of objects.
#: Real documents stay far below it (100,000 modules with two domains hold about 1.8 million).
MAX_VALUES = 4_000_000
#: Maximum number of those values that are objects or arrays. A container costs Python far more
#: memory than its two or three bytes of text; this keeps the densest documents (millions of `{}`)
#: within the memory bound of SPEC.md 15.2. 100,000 modules with five domains hold about 800,000.
MAX_CONTAINERS = 1_500_000
#: Maximum number of entries in `modules`.
MAX_MODULES = 100_000
#: Largest integer a document may hold (2**53 - 1, exactly representable as a double).
MAX_SAFE_INTEGER = 2**53 - 1
