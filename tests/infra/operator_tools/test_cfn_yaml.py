"""operator_tools.cfn_yaml: the tag-aware loader and the table definitions moto and the local stack build from."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from operator_tools.cfn_yaml import (
    TemplateShapeError,
    function_environment,
    function_handlers,
    function_property,
    loads_template,
    table_definitions,
)

SHORT_FORMS = """
Globals:
  Function:
    Timeout: 30
    Environment:
      Variables:
        SHARED: !Ref Thing
        OVERRIDDEN: globals
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Handler: pkg.mod.handler
      Timeout: 90
      Environment:
        Variables:
          OVERRIDDEN: own
      Policy:
        Version: 2012-10-17
        A: !GetAtt Table.Arn
        B: !GetAtt [Table, StreamArn]
        C: !Sub "${Table.Arn}/index/*"
        D: !If [HasTopic, !Ref Topic, !Ref "AWS::NoValue"]
        E: !Join ["", [a, !Select [0, !Split [",", "x,y"]]]]
        F: !Not [!Equals [!Ref P, ""]]
        G: !FindInMap [M, K, V]
        H: !Base64 text
        I: !ImportValue exported
        J: !Condition IsProd
  Other:
    Type: AWS::Serverless::Function
    Properties:
      Handler: pkg.other.handler
"""


def test_short_forms_become_the_json_form() -> None:
    policy = loads_template(SHORT_FORMS)["Resources"]["Fn"]["Properties"]["Policy"]
    assert policy == {
        "Version": "2012-10-17",  # a string, as CloudFormation reads it, not a date
        "A": {"Fn::GetAtt": ["Table", "Arn"]},
        "B": {"Fn::GetAtt": ["Table", "StreamArn"]},
        "C": {"Fn::Sub": "${Table.Arn}/index/*"},
        "D": {"Fn::If": ["HasTopic", {"Ref": "Topic"}, {"Ref": "AWS::NoValue"}]},
        "E": {"Fn::Join": ["", ["a", {"Fn::Select": [0, {"Fn::Split": [",", "x,y"]}]}]]},
        "F": {"Fn::Not": [{"Fn::Equals": [{"Ref": "P"}, ""]}]},
        "G": {"Fn::FindInMap": ["M", "K", "V"]},
        "H": {"Fn::Base64": "text"},
        "I": {"Fn::ImportValue": "exported"},
        "J": {"Condition": "IsProd"},
    }


def test_function_helpers_apply_globals_like_sam() -> None:
    template = loads_template(SHORT_FORMS)
    assert function_handlers(template) == {"Fn": "pkg.mod.handler", "Other": "pkg.other.handler"}
    assert function_property(template, "Fn", "Timeout") == 90
    assert function_property(template, "Other", "Timeout") == 30
    assert function_environment(template, "Fn") == {"SHARED": {"Ref": "Thing"}, "OVERRIDDEN": "own"}
    assert function_environment(template, "Other") == {"SHARED": {"Ref": "Thing"}, "OVERRIDDEN": "globals"}


def test_a_template_must_be_a_mapping() -> None:
    with pytest.raises(TemplateShapeError):
        loads_template("- just\n- a list\n")


def test_table_definitions_follow_the_contract(template: dict[str, Any]) -> None:
    definitions = table_definitions(template)
    assert set(definitions) == {"PortalsTable", "StatesTable", "RateLimitTable", "LeadEventsTable"}
    assert definitions["PortalsTable"] == {
        "KeySchema": [{"AttributeName": "member_id", "KeyType": "HASH"}],
        "AttributeDefinitions": [
            {"AttributeName": "member_id", "AttributeType": "S"},
            {"AttributeName": "domain", "AttributeType": "S"},
            {"AttributeName": "due_shard", "AttributeType": "S"},
            {"AttributeName": "refresh_due_at", "AttributeType": "N"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
        "GlobalSecondaryIndexes": [
            {
                "IndexName": "DomainIndex",
                "KeySchema": [{"AttributeName": "domain", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": "RefreshDueIndex",
                "KeySchema": [
                    {"AttributeName": "due_shard", "KeyType": "HASH"},
                    {"AttributeName": "refresh_due_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["version"]},
            },
        ],
        # The outbox of lifecycle events (PublisherFunction).
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    }
    assert definitions["LeadEventsTable"] == {
        "KeySchema": [{"AttributeName": "event_key", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "event_key", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
        "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    }
    assert definitions["StatesTable"] == {
        "KeySchema": [{"AttributeName": "state_hash", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "state_hash", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
        "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
    }
    assert definitions["RateLimitTable"]["KeySchema"] == [{"AttributeName": "bucket_id", "KeyType": "HASH"}]
    assert definitions["RateLimitTable"]["TimeToLiveSpecification"] == {
        "AttributeName": "expires_at",
        "Enabled": True,
    }


def test_table_definitions_create_working_tables_in_moto(template: dict[str, Any]) -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-central-1")
        for logical_id, definition in table_definitions(template).items():
            # Given the documented use: pop the TTL, create, then apply the TTL
            kwargs = dict(definition)
            ttl = kwargs.pop("TimeToLiveSpecification", None)
            client.create_table(TableName=logical_id, **kwargs)
            if ttl:
                client.update_time_to_live(TableName=logical_id, TimeToLiveSpecification=ttl)
        # Then the sparse due index answers a range query and the TTL is on
        client.put_item(
            TableName="PortalsTable",
            Item={
                "member_id": {"S": "m1"},
                "due_shard": {"S": "3"},
                "refresh_due_at": {"N": "100"},
                "version": {"N": "7"},
            },
        )
        client.put_item(
            TableName="PortalsTable", Item={"member_id": {"S": "m2"}, "domain": {"S": "a.bitrix24.com"}}
        )
        due = client.query(
            TableName="PortalsTable",
            IndexName="RefreshDueIndex",
            KeyConditionExpression="due_shard = :s AND refresh_due_at <= :now",
            ExpressionAttributeValues={":s": {"S": "3"}, ":now": {"N": "200"}},
        )["Items"]
        assert [(i["member_id"]["S"], i["version"]["N"]) for i in due] == [("m1", "7")]
        ttl = client.describe_time_to_live(TableName="StatesTable")["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")


def test_table_definitions_refuse_intrinsics_they_cannot_resolve() -> None:
    template = loads_template(
        """
Resources:
  T:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      KeySchema: [{AttributeName: !Ref KeyName, KeyType: HASH}]
      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
"""
    )
    with pytest.raises(TemplateShapeError, match="KeySchema"):
        table_definitions(template)


def test_provisioned_tables_carry_their_throughput() -> None:
    template = loads_template(
        """
Resources:
  T:
    Type: AWS::DynamoDB::Table
    Properties:
      KeySchema: [{AttributeName: id, KeyType: HASH}]
      AttributeDefinitions: [{AttributeName: id, AttributeType: S}]
      ProvisionedThroughput: {ReadCapacityUnits: 2, WriteCapacityUnits: 3}
"""
    )
    assert table_definitions(template)["T"]["ProvisionedThroughput"] == {
        "ReadCapacityUnits": 2,
        "WriteCapacityUnits": 3,
    }
