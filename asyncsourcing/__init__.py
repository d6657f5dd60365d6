"""asyncsourcing: asyncio-native event sourcing."""
