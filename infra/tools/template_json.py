"""Prints infra/template.yaml as JSON, optionally cut down to some resource types.

    python template_json.py TEMPLATE                      # the whole template
    python template_json.py TEMPLATE --only AWS::DynamoDB::Table,AWS::SQS::Queue

The cut-down form is a plain CloudFormation template (no SAM transform) holding only
those resources and the parameters they use; the tests create it in moto, whose
CloudFormation skips SAM and API Gateway v2, and run the AWS backend against exactly
the tables and queues the template declares. cfn-lint's loader reads the short-form
tags (!Sub, !GetAtt, ...) that plain YAML loaders reject.
"""

import json
import sys

from cfnlint.decode import decode


def referenced_names(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "Ref" and isinstance(v, str):
                out.add(v)
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                i = 0
                while True:
                    i = text.find("${", i)
                    if i < 0:
                        break
                    j = text.find("}", i)
                    out.add(text[i + 2 : j].split(".")[0])
                    i = j
                referenced_names(v, out)
            else:
                referenced_names(v, out)
    elif isinstance(node, list):
        for v in node:
            referenced_names(v, out)


def main(argv):
    template, errors = decode(argv[1])
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        return 1
    if len(argv) > 3 and argv[2] == "--only":
        types = set(argv[3].split(","))
        resources = {k: v for k, v in template["Resources"].items() if v.get("Type") in types}
        used = set()
        referenced_names(resources, used)
        params = {k: v for k, v in template.get("Parameters", {}).items() if k in used}
        template = {"AWSTemplateFormatVersion": "2010-09-09", "Parameters": params, "Resources": resources}
    json.dump(template, sys.stdout, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
