"""What a run may be asked to do: composing conf/ in code, the schema of every key, and the checks that refuse a
bad config with one line naming the key, the value and a valid example."""
