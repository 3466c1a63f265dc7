"""Example programs that ship with Geode, referenced as ``geode.examples.<module>:program``."""
