"""Validates the OpenAPI document on stdin with the independent `openapi-spec-validator`.

usage: openapi_validate.py < openapi.json   (exit 0 and "valid", or 1 with the error)
"""
import json
import sys

from openapi_spec_validator import validate


def main() -> int:
    try:
        validate(json.load(sys.stdin))
    except Exception as e:  # the validator's error, with the path at fault
        print(f"invalid: {e}")
        return 1
    print("valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
