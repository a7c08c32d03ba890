"""One fuzz target per module; each defines ``make() -> Callable[[bytes], None]``."""
