"""Examples that ship with ppmlops: model factories a spec can name (`model.factory`)."""
