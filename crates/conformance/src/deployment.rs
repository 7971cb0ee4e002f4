//! `infra/template.yaml` resolved as a deployment with given parameters would be: each
//! function's name, environment, timeout and concurrency; each resource's name and ARN;
//! each role's grants. The one place the tests learn how the product is deployed, so
//! that no test writes a function's configuration by hand (the e2e story, the handler
//! tests, the template checks).
//!
//! It resolves what the template uses: `Ref` (parameters, pseudo parameters,
//! resources), `Fn::Sub` (both forms), `Fn::GetAtt`, `Fn::If`, `Fn::Join`, `Fn::Select`,
//! conditions with `Fn::Equals`/`Fn::Not`/`Fn::And`/`Fn::Or`, and SAM's `Globals`. Anything
//! else is an error, not a value passed through: a new intrinsic in the template must
//! be taught here before a test can pass on it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";

#[derive(Debug, Clone)]
pub struct Deployment {
    template: Value,
    params: BTreeMap<String, String>,
    pub stack: String,
}

/// A function as deployed.
#[derive(Debug, Clone)]
pub struct Function {
    pub logical_id: String,
    pub name: String,
    /// `Globals.Function.Environment` merged with the function's own, resolved.
    pub env: BTreeMap<String, String>,
    pub timeout_secs: u64,
    pub memory_mb: u64,
    pub reserved_concurrency: Option<u64>,
    pub log_group: Option<String>,
}

type R<T> = Result<T, String>;

impl Deployment {
    /// The repository's template (as `infra/tools/template_json.py` decodes it) with
    /// `params` over its defaults.
    pub fn of_repo_template(params: &[(&str, &str)]) -> Deployment {
        let template: Value = serde_json::from_str(&crate::moto::template_json(None)).expect("template JSON");
        Deployment::new(template, params).unwrap_or_else(|e| panic!("infra/template.yaml: {e}"))
    }

    /// Checks each parameter as CloudFormation would (allowed pattern, values, minimum).
    pub fn new(template: Value, given: &[(&str, &str)]) -> R<Deployment> {
        let mut params = BTreeMap::new();
        let declared = template["Parameters"].as_object().cloned().unwrap_or_default();
        for (k, _) in given {
            if !declared.contains_key(*k) {
                return Err(format!("no parameter {k}"));
            }
        }
        for (name, p) in &declared {
            let value = match given.iter().find(|(k, _)| k == name) {
                Some((_, v)) => v.to_string(),
                None => match &p["Default"] {
                    Value::Null => return Err(format!("parameter {name} has no default and was not given")),
                    v => scalar(v)?,
                },
            };
            check_parameter(name, p, &value)?;
            params.insert(name.clone(), value);
        }
        let stack = format!("{}-stack", params.get("Deployment").map(String::as_str).unwrap_or("lineup"));
        Ok(Deployment { template, params, stack })
    }

    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or_else(|| panic!("no parameter {name}"))
    }

    /// The parameters, as `create_stack` takes them.
    pub fn params(&self) -> Vec<(&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    pub fn resources(&self) -> &Map<String, Value> {
        self.template["Resources"].as_object().expect("Resources")
    }

    pub fn resource(&self, logical: &str) -> R<&Value> {
        self.resources().get(logical).ok_or_else(|| format!("no resource {logical}"))
    }

    /// The resources of type `ty` that the stack creates (a resource whose `Condition`
    /// is false is not created).
    pub fn of_type(&self, ty: &str) -> Vec<String> {
        let created = |r: &Value| match r["Condition"].as_str() {
            Some(c) => self.condition(c).unwrap_or_else(|e| panic!("condition {c}: {e}")),
            None => true,
        };
        self.resources().iter().filter(|(_, r)| r["Type"] == ty && created(r)).map(|(k, _)| k.clone()).collect()
    }

    /// Every serverless function, resolved.
    pub fn functions(&self) -> Vec<Function> {
        self.of_type("AWS::Serverless::Function")
            .iter()
            .map(|id| self.function(id).unwrap_or_else(|e| panic!("{id}: {e}")))
            .collect()
    }

    /// The function whose deployed name ends in `suffix` (`-gateway`, ...).
    pub fn function_named(&self, suffix: &str) -> Function {
        let mut found: Vec<Function> = self.functions().into_iter().filter(|f| f.name.ends_with(suffix)).collect();
        assert_eq!(found.len(), 1, "exactly one function named *{suffix}");
        found.remove(0)
    }

    pub fn function(&self, logical: &str) -> R<Function> {
        let props = &self.resource(logical)?["Properties"];
        let globals = &self.template["Globals"]["Function"];
        let prop = |k: &str| -> R<Option<Value>> {
            match props.get(k).filter(|v| !v.is_null()).or_else(|| globals.get(k).filter(|v| !v.is_null())) {
                Some(v) => self.resolve(v),
                None => Ok(None),
            }
        };
        let mut env = BTreeMap::new();
        for vars in [&globals["Environment"]["Variables"], &props["Environment"]["Variables"]] {
            for (k, v) in vars.as_object().into_iter().flatten() {
                if let Some(v) = self.resolve(v)? {
                    env.insert(k.clone(), scalar(&v)?);
                }
            }
        }
        let number = |k: &str, default: u64| -> R<u64> {
            match prop(k)? {
                Some(v) => scalar(&v)?.parse().map_err(|e| format!("{logical}.{k}: {e}")),
                None => Ok(default),
            }
        };
        let log_group = match props["LoggingConfig"].get("LogGroup") {
            Some(v) => self.resolve(v)?.map(|v| scalar(&v)).transpose()?,
            None => None,
        };
        Ok(Function {
            logical_id: logical.to_owned(),
            name: self.physical_name(logical)?,
            env,
            // SAM's defaults.
            timeout_secs: number("Timeout", 3)?,
            memory_mb: number("MemorySize", 128)?,
            reserved_concurrency: prop("ReservedConcurrentExecutions")?
                .map(|v| scalar(&v).and_then(|s| s.parse().map_err(|e| format!("{e}"))))
                .transpose()?,
            log_group,
        })
    }

    /// The name a resource gets: its name property where the template sets one.
    pub fn physical_name(&self, logical: &str) -> R<String> {
        let r = self.resource(logical)?;
        let key = match r["Type"].as_str().unwrap_or_default() {
            "AWS::DynamoDB::Table" => "TableName",
            "AWS::SQS::Queue" => "QueueName",
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => "FunctionName",
            "AWS::Logs::LogGroup" => "LogGroupName",
            "AWS::CloudWatch::Alarm" => "AlarmName",
            "AWS::IAM::Role" => "RoleName",
            "AWS::Events::Rule" => "Name",
            _ => "",
        };
        match r["Properties"].get(key) {
            Some(v) if !key.is_empty() => scalar(&self.resolve(v)?.ok_or("a name of no value")?),
            // CloudFormation generates one: stack, logical id, a suffix.
            _ => Ok(format!("{}-{logical}-GENERATED", self.stack)),
        }
    }

    pub fn arn(&self, logical: &str) -> R<String> {
        let name = self.physical_name(logical)?;
        let (region, account) = (REGION, ACCOUNT);
        Ok(match self.resource(logical)?["Type"].as_str().unwrap_or_default() {
            "AWS::DynamoDB::Table" => format!("arn:aws:dynamodb:{region}:{account}:table/{name}"),
            "AWS::SQS::Queue" => format!("arn:aws:sqs:{region}:{account}:{name}"),
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => {
                format!("arn:aws:lambda:{region}:{account}:function:{name}")
            }
            "AWS::Logs::LogGroup" => format!("arn:aws:logs:{region}:{account}:log-group:{name}:*"),
            "AWS::IAM::Role" => format!("arn:aws:iam::{account}:role/{name}"),
            "AWS::Events::Rule" => format!("arn:aws:events:{region}:{account}:rule/{name}"),
            other => return Err(format!("no Arn for {logical} ({other})")),
        })
    }

    fn ref_of(&self, name: &str) -> R<Value> {
        if let Some(v) = self.params.get(name) {
            return Ok(Value::String(v.clone()));
        }
        Ok(Value::String(match name {
            "AWS::Region" => REGION.into(),
            "AWS::AccountId" => ACCOUNT.into(),
            "AWS::Partition" => "aws".into(),
            "AWS::URLSuffix" => "amazonaws.com".into(),
            "AWS::StackName" => self.stack.clone(),
            "AWS::NoValue" => return Ok(Value::Null),
            _ => {
                let name_ = self.physical_name(name)?;
                match self.resource(name)?["Type"].as_str().unwrap_or_default() {
                    "AWS::SQS::Queue" => format!("https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name_}"),
                    "AWS::Serverless::HttpApi" => "httpapiid".into(),
                    _ => name_,
                }
            }
        }))
    }

    fn get_att(&self, logical: &str, attr: &str) -> R<Value> {
        let v = match attr {
            "Arn" => self.arn(logical)?,
            "QueueName" => self.physical_name(logical)?,
            "QueueUrl" => return self.ref_of(logical),
            _ => return Err(format!("Fn::GetAtt {logical}.{attr} is not modelled")),
        };
        Ok(Value::String(v))
    }

    pub fn condition(&self, name: &str) -> R<bool> {
        let c = self.template["Conditions"].get(name).ok_or_else(|| format!("no condition {name}"))?;
        self.truth(c)
    }

    fn truth(&self, v: &Value) -> R<bool> {
        let (f, arg) = single(v).ok_or_else(|| format!("not a condition: {v}"))?;
        let args = arg.as_array().cloned().unwrap_or_default();
        match f {
            "Fn::Equals" => {
                let a = self.resolve(&args[0])?.map(|v| scalar(&v)).transpose()?;
                let b = self.resolve(&args[1])?.map(|v| scalar(&v)).transpose()?;
                Ok(a == b)
            }
            "Fn::Not" => Ok(!self.truth(&args[0])?),
            "Fn::And" => args.iter().try_fold(true, |acc, a| Ok(acc && self.truth(a)?)),
            "Fn::Or" => args.iter().try_fold(false, |acc, a| Ok(acc || self.truth(a)?)),
            "Condition" => self.condition(arg.as_str().unwrap_or_default()),
            _ => Err(format!("{f} is not a condition function")),
        }
    }

    /// The value of `v` with every intrinsic function resolved; `None` for `AWS::NoValue`.
    pub fn resolve(&self, v: &Value) -> R<Option<Value>> {
        if let Some((f, arg)) = single(v).filter(|(f, _)| *f == "Ref" || f.starts_with("Fn::")) {
            return match f {
                "Ref" => {
                    let r = self.ref_of(arg.as_str().ok_or("Ref of a non-string")?)?;
                    Ok((!r.is_null()).then_some(r))
                }
                "Fn::GetAtt" => {
                    let (l, a) = match arg {
                        Value::Array(p) if p.len() == 2 => (p[0].as_str(), p[1].as_str()),
                        Value::String(s) => match s.split_once('.') {
                            Some((l, a)) => (Some(l), Some(a)),
                            None => (None, None),
                        },
                        _ => (None, None),
                    };
                    let (Some(l), Some(a)) = (l, a) else { return Err(format!("bad Fn::GetAtt {arg}")) };
                    self.get_att(l, a).map(Some)
                }
                "Fn::Sub" => self.sub(arg).map(|s| Some(Value::String(s))),
                "Fn::If" => {
                    let p = arg.as_array().filter(|p| p.len() == 3).ok_or("bad Fn::If")?;
                    let branch = if self.condition(p[0].as_str().unwrap_or_default())? { &p[1] } else { &p[2] };
                    self.resolve(branch)
                }
                "Fn::Join" => {
                    let p = arg.as_array().filter(|p| p.len() == 2).ok_or("bad Fn::Join")?;
                    let sep = p[0].as_str().unwrap_or_default();
                    let parts = self.resolve(&p[1])?.and_then(|v| v.as_array().cloned()).unwrap_or_default();
                    let parts = parts.iter().map(scalar).collect::<R<Vec<_>>>()?;
                    Ok(Some(Value::String(parts.join(sep))))
                }
                "Fn::Select" => {
                    let p = arg.as_array().filter(|p| p.len() == 2).ok_or("bad Fn::Select")?;
                    let i: usize = scalar(&p[0])?.parse().map_err(|e| format!("Fn::Select index: {e}"))?;
                    let list = self.resolve(&p[1])?.and_then(|v| v.as_array().cloned()).unwrap_or_default();
                    list.get(i).cloned().map(Some).ok_or_else(|| format!("Fn::Select {i} out of range"))
                }
                other => Err(format!("{other} is not modelled in deployment.rs")),
            };
        }
        Ok(Some(match v {
            Value::Array(items) => {
                let mut out = Vec::new();
                for i in items {
                    if let Some(i) = self.resolve(i)? {
                        out.push(i);
                    }
                }
                Value::Array(out)
            }
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, i) in m {
                    if let Some(i) = self.resolve(i)? {
                        out.insert(k.clone(), i);
                    }
                }
                Value::Object(out)
            }
            other => other.clone(),
        }))
    }

    fn sub(&self, arg: &Value) -> R<String> {
        let (text, vars) = match arg {
            Value::String(s) => (s.as_str(), Map::new()),
            Value::Array(p) if p.len() == 2 => {
                (p[0].as_str().ok_or("bad Fn::Sub")?, p[1].as_object().cloned().unwrap_or_default())
            }
            _ => return Err(format!("bad Fn::Sub {arg}")),
        };
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            // `${!Literal}` stands for `${Literal}`.
            if let Some(lit) = after.strip_prefix('!') {
                out.push_str("${");
                rest = lit;
                continue;
            }
            let j = after.find('}').ok_or_else(|| format!("unclosed ${{ in {text}"))?;
            let name = &after[..j];
            let value = match vars.get(name) {
                Some(v) => self.resolve(v)?.ok_or("AWS::NoValue in Fn::Sub")?,
                None => match name.split_once('.') {
                    Some((l, a)) if !name.starts_with("AWS::") => self.get_att(l, a)?,
                    _ => self.ref_of(name)?,
                },
            };
            out.push_str(&scalar(&value)?);
            rest = &after[j + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Each role's statements, resolved: (role, actions, resources).
    pub fn grants(&self) -> Vec<(String, Vec<String>, Vec<String>)> {
        let mut out = Vec::new();
        for role in self.of_type("AWS::IAM::Role") {
            let r = self.resolve(&self.resources()[&role]["Properties"]["Policies"]).expect("policies");
            for policy in r.into_iter().flat_map(|p| p.as_array().cloned().unwrap_or_default()) {
                for st in as_list(&policy["PolicyDocument"]["Statement"]) {
                    let actions = as_list(&st["Action"]).iter().map(|a| scalar(a).expect("action")).collect();
                    let resources = as_list(&st["Resource"]).iter().map(|a| scalar(a).expect("resource")).collect();
                    out.push((role.clone(), actions, resources));
                }
            }
        }
        out
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` any one.
pub fn iam_matches(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    // dp[j]: p[..i] matches s[..j].
    let mut dp = vec![false; s.len() + 1];
    dp[0] = true;
    for pc in &p {
        let mut next = vec![false; s.len() + 1];
        if *pc == '*' {
            next[0] = dp[0];
        }
        for j in 1..=s.len() {
            next[j] = match pc {
                '*' => next[j - 1] || dp[j],
                '?' => dp[j - 1],
                c => dp[j - 1] && *c == s[j - 1],
            };
        }
        dp = next;
    }
    dp[s.len()]
}

pub fn as_list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Null => vec![],
        other => vec![other.clone()],
    }
}

/// `{"Fn::X": arg}` → ("Fn::X", arg).
fn single(v: &Value) -> Option<(&str, &Value)> {
    let m = v.as_object()?;
    (m.len() == 1).then(|| m.iter().next().map(|(k, v)| (k.as_str(), v)))?
}

/// A scalar as CloudFormation passes it to a property that takes a string.
fn scalar(v: &Value) -> R<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("not a scalar: {other}")),
    }
}

fn check_parameter(name: &str, p: &Value, value: &str) -> R<()> {
    if let Some(pattern) = p["AllowedPattern"].as_str() {
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("{name}: {e}"))?;
        if !re.is_match(value) {
            return Err(format!("parameter {name}: {value:?} does not match {pattern}"));
        }
    }
    if let Some(allowed) = p["AllowedValues"].as_array() {
        if !allowed.iter().any(|a| scalar(a).is_ok_and(|a| a == value)) {
            return Err(format!("parameter {name}: {value:?} is not an allowed value"));
        }
    }
    if p["Type"] == "Number" {
        let n: f64 = value.parse().map_err(|_| format!("parameter {name}: {value:?} is not a number"))?;
        if let Some(min) = p["MinValue"].as_f64() {
            if n < min {
                return Err(format!("parameter {name}: {value} is below {min}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t() -> Value {
        json!({
            "Parameters": {
                "Deployment": {"Type": "String", "Default": "lineup", "AllowedPattern": "[a-z-]{1,30}"},
                "Ttl": {"Type": "Number", "Default": 30, "MinValue": 1},
                "Cap": {"Type": "Number", "Default": 0},
            },
            "Conditions": {"Capped": {"Fn::Not": [{"Fn::Equals": [{"Ref": "Cap"}, 0]}]}},
            "Globals": {"Function": {"Timeout": 7, "Environment": {"Variables": {"D": {"Ref": "Deployment"}, "T": {"Ref": "Ttl"}}}}},
            "Resources": {
                "Q": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Fn::Sub": "${Deployment}_dl"}}},
                "F": {"Type": "AWS::Serverless::Function", "Properties": {
                    "FunctionName": {"Fn::Sub": "${Deployment}-f"},
                    "ReservedConcurrentExecutions": {"Fn::If": ["Capped", {"Ref": "Cap"}, {"Ref": "AWS::NoValue"}]},
                    "Environment": {"Variables": {"T": 5, "QN": {"Fn::GetAtt": ["Q", "QueueName"]}, "A": {"Fn::Sub": ["${Q.Arn}/${X}", {"X": "x"}]}}}}},
            }
        })
    }

    #[test]
    fn resolves_functions_as_deployed() {
        let d = Deployment::new(t(), &[("Deployment", "prod")]).unwrap();
        let f = d.function("F").unwrap();
        assert_eq!(f.name, "prod-f");
        assert_eq!(f.timeout_secs, 7, "from the globals");
        assert_eq!(f.reserved_concurrency, None);
        let env: Vec<(&str, &str)> = f.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            env,
            vec![("A", "arn:aws:sqs:us-east-1:123456789012:prod_dl/x"), ("D", "prod"), ("QN", "prod_dl"), ("T", "5")]
        );
        let capped = Deployment::new(t(), &[("Cap", "3")]).unwrap();
        assert_eq!(capped.function("F").unwrap().reserved_concurrency, Some(3));
    }

    #[test]
    fn parameters_are_checked() {
        assert!(Deployment::new(t(), &[("Deployment", "Bad_Name")]).is_err());
        assert!(Deployment::new(t(), &[("Ttl", "0")]).is_err());
        assert!(Deployment::new(t(), &[("Nope", "1")]).is_err());
    }

    #[test]
    fn iam_wildcards() {
        assert!(iam_matches("arn:x:lineup_*", "arn:x:lineup_abc"));
        assert!(!iam_matches("arn:x:lineup_*", "arn:x:lineup-staging_abc"));
        assert!(iam_matches("a?c*", "abcdef"));
        assert!(!iam_matches("a?c", "ac"));
        assert!(iam_matches("*", ""));
    }
}
