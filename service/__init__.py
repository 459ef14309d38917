"""torchwire."""
