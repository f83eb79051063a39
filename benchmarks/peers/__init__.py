"""Plain array-op EM peers (what a user would write by hand), kept honest: log domain, same init."""
