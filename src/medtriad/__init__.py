"""medtriad."""
