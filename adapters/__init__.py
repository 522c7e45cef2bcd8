"""Platform adapters. Each folder implements :class:`adapters.base.Adapter` for one platform."""
