"""The reference relay: a compact, correct one-api-style relay (see ``relaygate.reference.app``)."""
