"""Configuration: the typed schema, the resolvers, and the checks that run before anything is loaded."""
