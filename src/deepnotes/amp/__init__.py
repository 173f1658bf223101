"""Mixed precision: float formats from their bits, and dynamic loss scaling."""
from . import formats, scaler
from .formats import FORMATS, FloatInfo, decode, decoded_value, encode, float_info, representations, round_to
from .scaler import DynamicLossScaler

__all__ = ["formats", "scaler", "FORMATS", "FloatInfo", "float_info", "decode", "encode", "decoded_value",
           "round_to", "representations", "DynamicLossScaler"]
