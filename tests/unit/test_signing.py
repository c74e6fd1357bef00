import time

from dendro_prefect.protocol.signing import (
    compute_resource_headers,
    generate_keypair,
    make_resource_code,
    public_key_of,
    sign_message_str,
    verify_resource_code,
    verify_signature_str,
)

# The test vector of the protocol document, computed with dendro 0.2.17's own _sign_message_str.
VECTOR_PRIVATE_KEY = "11" * 32
VECTOR_ID = "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
VECTOR_PAYLOAD = f"/api/compute_resource/compute_resources/{VECTOR_ID}/unfinished_jobs"
VECTOR_SIGNATURE = (
    "338adf4caa28e81890a9ed5309e49da1055123772f5a6fef6681819d8007d3d8"
    "e388762236c627c91015af3e49aad1436f11c556e94de478b74deb610693d90c"
)


def test_protocol_test_vector():
    assert public_key_of(VECTOR_PRIVATE_KEY) == VECTOR_ID
    assert sign_message_str(VECTOR_PAYLOAD, VECTOR_PRIVATE_KEY) == VECTOR_SIGNATURE
    assert verify_signature_str(VECTOR_PAYLOAD, VECTOR_ID, VECTOR_SIGNATURE)


def test_headers_sign_the_path():
    headers = compute_resource_headers(VECTOR_PAYLOAD, VECTOR_ID, VECTOR_PRIVATE_KEY)
    assert headers == {
        "compute-resource-id": VECTOR_ID,
        "compute-resource-payload": VECTOR_PAYLOAD,
        "compute-resource-signature": VECTOR_SIGNATURE,
    }


def test_signature_of_another_message_or_key_does_not_verify():
    other_id, _ = generate_keypair()
    assert not verify_signature_str(VECTOR_PAYLOAD + "x", VECTOR_ID, VECTOR_SIGNATURE)
    assert not verify_signature_str(VECTOR_PAYLOAD, other_id, VECTOR_SIGNATURE)
    assert not verify_signature_str(VECTOR_PAYLOAD, VECTOR_ID, "not hex")


def test_resource_code_valid_expired_and_foreign():
    resource_id, private_key = generate_keypair()
    other_id, _ = generate_keypair()
    assert verify_resource_code(make_resource_code(private_key), resource_id) is None
    old = make_resource_code(private_key, int(time.time()) - 301)
    assert verify_resource_code(old, resource_id) == "resource code expired"
    assert verify_resource_code(make_resource_code(private_key), other_id) == "resource code signature does not verify"
    assert verify_resource_code("garbage", resource_id) == "malformed resource code"
