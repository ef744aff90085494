"""API Gateway events for Mangum, built by hand (the shapes in Mangum's docs and AWS's)."""

from __future__ import annotations

import uuid
from typing import Any


def http_api_v2(path: str, method: str = "GET") -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event."""
    request_id = str(uuid.uuid4())
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "abc.execute-api.eu-west-1.amazonaws.com", "user-agent": "tests", "accept": "*/*"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "tests",
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 1700000000000,
        },
        "isBase64Encoded": False,
    }


def rest_api_v1(path: str, method: str = "GET") -> dict[str, Any]:
    """An API Gateway REST API (payload format 1.0) event."""
    headers = {"Host": "abc.execute-api.eu-west-1.amazonaws.com", "User-Agent": "tests"}
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": "/prod" + path,
            "identity": {"sourceIp": "192.0.2.1"},
            "stage": "prod",
            "requestId": str(uuid.uuid4()),
        },
        "body": None,
        "isBase64Encoded": False,
    }


EVENTS = {"v2": http_api_v2, "v1": rest_api_v1}
