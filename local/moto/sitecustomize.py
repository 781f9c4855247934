"""Loaded by the moto_server that the local stack and the tests start (on its PYTHONPATH).

DynamoDB applies each request atomically: a conditional update is checked and written as one
step, and a read never sees half of a write. moto's server handles requests on several
threads and applies an update piece by piece, so under load a read could see half an update,
and two racing conditional updates could both pass their condition. The pipeline's leases
rely on DynamoDB's atomicity, so this makes moto's DynamoDB handle one request at a time.
"""

import threading


def _one_dynamodb_request_at_a_time():
    try:
        from moto.dynamodb.responses import DynamoHandler
    except ImportError:  # not moto's interpreter
        return
    lock = threading.Lock()
    handle = DynamoHandler.call_action

    def call_action(self):
        with lock:
            return handle(self)

    DynamoHandler.call_action = call_action


_one_dynamodb_request_at_a_time()
