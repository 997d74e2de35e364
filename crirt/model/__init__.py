"""Pydantic mirrors of the CRI data messages, independent of the generated protobuf bindings."""
