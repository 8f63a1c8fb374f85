#include "config/deployment_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>

#include "config/spec.h"

namespace serve::config {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kSource[] = "config.yaml";

// Parses `yaml`, failing the test (with the error) if it does not parse.
ConfigFile ParseOk(std::string_view yaml) {
  Result<ConfigFile> result = ParseConfig(yaml, kSource);
  EXPECT_TRUE(result.ok()) << result.error();
  return result.ok() ? std::move(result).value() : ConfigFile{};
}

// Parses `yaml`, failing the test if it parses; returns the error message.
std::string ParseError(std::string_view yaml) {
  Result<ConfigFile> result = ParseConfig(yaml, kSource);
  EXPECT_FALSE(result.ok()) << "expected an error for:\n" << yaml;
  return result.ok() ? std::string() : result.error();
}

// One deployment, with `options` (already indented by four spaces) after name and runtime.
std::string OneDeployment(const std::string& options) {
  return "deployments:\n"
         "  - name: app\n"
         "    runtime: builtin:hello\n" +
         options;
}

// One deployment named `name_yaml` (as written in YAML, so it may be quoted).
std::string NamedDeployment(const std::string& name_yaml) {
  return "deployments:\n"
         "  - name: " +
         name_yaml +
         "\n"
         "    runtime: builtin:hello\n";
}

// The user_config of a one-deployment file whose user_config is `yaml_value`.
std::string UserConfigJson(const std::string& yaml_value) {
  ConfigFile file = ParseOk(OneDeployment("    user_config: " + yaml_value + "\n"));
  return file.deployments.empty() ? std::string("<no deployment>")
                                  : file.deployments[0].user_config_json;
}

// A deployment that passes ValidateDeployment.
Deployment ValidDeployment(const std::string& name = "app") {
  Deployment d;
  d.name = name;
  d.route_prefix = "/" + name;
  d.runtime = "builtin:hello";
  return d;
}

// ---------------------------------------------------------------------------------------------
// Parsing valid files.

TEST(ParseConfig, MinimalDeploymentGetsDefaults) {
  ConfigFile file = ParseOk(
      "deployments:\n"
      "  - name: hello\n"
      "    runtime: builtin:hello\n");
  ASSERT_EQ(file.deployments.size(), 1u);
  const Deployment& d = file.deployments[0];
  EXPECT_EQ(d.name, "hello");
  EXPECT_EQ(d.runtime, "builtin:hello");
  EXPECT_EQ(d.version, "");
  EXPECT_EQ(d.route_prefix, "/hello");
  EXPECT_EQ(d.num_replicas, 1);
  EXPECT_EQ(d.max_concurrent_queries, 100);
  EXPECT_EQ(d.user_config_json, "");
  EXPECT_EQ(d.health_check_period_s, 10);
  EXPECT_EQ(d.health_check_timeout_s, 30);
  EXPECT_EQ(d.graceful_shutdown_wait_loop_s, 2);
  EXPECT_EQ(d.graceful_shutdown_timeout_s, 20);
  EXPECT_EQ(d.resources.num_cpus, 1);
  EXPECT_EQ(d.resources.num_gpus, 0);
  EXPECT_TRUE(d.resources.custom.empty());
}

TEST(ParseConfig, ExampleFromTheDesign) {
  ConfigFile file = ParseOk(
      "deployments:\n"
      "  - name: hello\n"
      "    route_prefix: /hello\n"
      "    runtime: builtin:hello\n"
      "    num_replicas: 1\n"
      "    user_config: {message: \"hello world\"}\n"
      "    resources: {num_cpus: 0.5, num_gpus: 0, my_accel: 1}\n");
  ASSERT_EQ(file.deployments.size(), 1u);
  const Deployment& d = file.deployments[0];
  EXPECT_EQ(d.route_prefix, "/hello");
  EXPECT_EQ(d.user_config_json, R"({"message":"hello world"})");
  EXPECT_EQ(d.resources.num_cpus, 0.5);
  EXPECT_EQ(d.resources.num_gpus, 0);
  EXPECT_EQ(d.resources.custom, (std::map<std::string, double>{{"my_accel", 1}}));
}

TEST(ParseConfig, EveryOption) {
  ConfigFile file = ParseOk(
      "deployments:\n"
      "  - name: model_v2-b\n"
      "    version: abc123\n"
      "    route_prefix: /api/model\n"
      "    runtime: builtin:echo\n"
      "    num_replicas: 0\n"
      "    max_concurrent_queries: 7\n"
      "    user_config: [1, 2]\n"
      "    health_check_period_s: 0.25\n"
      "    health_check_timeout_s: 3\n"
      "    graceful_shutdown_wait_loop_s: 0\n"
      "    graceful_shutdown_timeout_s: 1.5e1\n"
      "    resources:\n"
      "      num_cpus: 4\n"
      "      num_gpus: 0.5\n"
      "      memory: 1024\n"
      "      tpu: 0\n");
  ASSERT_EQ(file.deployments.size(), 1u);
  const Deployment& d = file.deployments[0];
  EXPECT_EQ(d.name, "model_v2-b");
  EXPECT_EQ(d.version, "abc123");
  EXPECT_EQ(d.route_prefix, "/api/model");
  EXPECT_EQ(d.runtime, "builtin:echo");
  EXPECT_EQ(d.num_replicas, 0);
  EXPECT_EQ(d.max_concurrent_queries, 7);
  EXPECT_EQ(d.user_config_json, "[1,2]");
  EXPECT_EQ(d.health_check_period_s, 0.25);
  EXPECT_EQ(d.health_check_timeout_s, 3);
  EXPECT_EQ(d.graceful_shutdown_wait_loop_s, 0);
  EXPECT_EQ(d.graceful_shutdown_timeout_s, 15);
  EXPECT_EQ(d.resources.num_cpus, 4);
  EXPECT_EQ(d.resources.num_gpus, 0.5);
  EXPECT_EQ(d.resources.custom, (std::map<std::string, double>{{"memory", 1024}, {"tpu", 0}}));
}

TEST(ParseConfig, KeepsDeploymentsInFileOrder) {
  ConfigFile file = ParseOk(
      "deployments:\n"
      "  - {name: b, runtime: builtin:echo}\n"
      "  - {name: a, runtime: builtin:hello}\n"
      "  - {name: c, runtime: builtin:hello, route_prefix: /}\n");
  ASSERT_EQ(file.deployments.size(), 3u);
  EXPECT_EQ(file.deployments[0].name, "b");
  EXPECT_EQ(file.deployments[1].name, "a");
  EXPECT_EQ(file.deployments[2].name, "c");
  EXPECT_EQ(file.deployments[2].route_prefix, "/");
}

TEST(ParseConfig, AcceptsRayUnderscoreAliasesForHealthChecks) {
  ConfigFile file =
      ParseOk(OneDeployment("    _health_check_period_s: 4\n"
                            "    _health_check_timeout_s: 8\n"));
  ASSERT_EQ(file.deployments.size(), 1u);
  EXPECT_EQ(file.deployments[0].health_check_period_s, 4);
  EXPECT_EQ(file.deployments[0].health_check_timeout_s, 8);
}

TEST(ParseConfig, AliasAndOptionTogetherAreAnError) {
  EXPECT_EQ(ParseError(OneDeployment("    health_check_period_s: 4\n"
                                     "    _health_check_period_s: 5\n")),
            "config.yaml:5: deployment 'app': health_check_period_s is given twice (as "
            "'health_check_period_s'), on lines 4 and 5; keep one");
}

TEST(ParseConfig, VersionMayBeWrittenAsANumber) {
  EXPECT_EQ(ParseOk(OneDeployment("    version: 2\n")).deployments[0].version, "2");
  // The text is kept as written, not reformatted through a number.
  EXPECT_EQ(ParseOk(OneDeployment("    version: 2.0\n")).deployments[0].version, "2.0");
  EXPECT_EQ(ParseOk(OneDeployment("    version: \"v1\"\n")).deployments[0].version, "v1");
}

TEST(ParseConfig, WholeNumbersMayBeHexOrExplicitlyPositive) {
  EXPECT_EQ(ParseOk(OneDeployment("    num_replicas: +3\n")).deployments[0].num_replicas, 3);
  EXPECT_EQ(ParseOk(OneDeployment("    num_replicas: 0x10\n")).deployments[0].num_replicas, 16);
}

TEST(ParseConfig, NumbersMayBeIntegersOrFloats) {
  ConfigFile file =
      ParseOk(OneDeployment("    health_check_period_s: .5\n"
                            "    health_check_timeout_s: 5\n"
                            "    graceful_shutdown_timeout_s: 1e2\n"));
  EXPECT_EQ(file.deployments[0].health_check_period_s, 0.5);
  EXPECT_EQ(file.deployments[0].health_check_timeout_s, 5);
  EXPECT_EQ(file.deployments[0].graceful_shutdown_timeout_s, 100);
}

TEST(ParseConfig, NullUserConfigIsTheSameAsNone) {
  EXPECT_EQ(UserConfigJson("null"), "");
  EXPECT_EQ(UserConfigJson("~"), "");
  EXPECT_EQ(UserConfigJson(""), "");
}

TEST(ParseConfig, TrailingDocumentMarkerIsFine) { ParseOk("---\n" + OneDeployment("") + "...\n"); }

// ---------------------------------------------------------------------------------------------
// user_config to JSON.

TEST(UserConfig, NestedMappingsAndLists) {
  EXPECT_EQ(UserConfigJson("{a: {b: [1, {c: x}], d: []}, e: {}}"),
            R"({"a":{"b":[1,{"c":"x"}],"d":[]},"e":{}})");
}

TEST(UserConfig, BlockStyleNesting) {
  ConfigFile file =
      ParseOk(OneDeployment("    user_config:\n"
                            "      threshold: 0.5\n"
                            "      labels:\n"
                            "        - cat\n"
                            "        - dog\n"
                            "      model:\n"
                            "        path: /models/a\n"
                            "        warm: true\n"));
  EXPECT_EQ(file.deployments[0].user_config_json,
            R"({"threshold":0.5,"labels":["cat","dog"],"model":{"path":"/models/a","warm":true}})");
}

TEST(UserConfig, KeepsKeyOrderFromTheFile) {
  EXPECT_EQ(UserConfigJson("{z: 1, a: 2, m: 3}"), R"({"z":1,"a":2,"m":3})");
}

TEST(UserConfig, ScalarsKeepTheirYamlTypes) {
  EXPECT_EQ(UserConfigJson("[true, false, True, FALSE]"), "[true,false,true,false]");
  EXPECT_EQ(UserConfigJson("[12, -3, +4, 0, 0x1F, 0o17]"), "[12,-3,4,0,31,15]");
  EXPECT_EQ(UserConfigJson("[1.5, -0.25, 1e3, .5]"), "[1.5,-0.25,1000.0,0.5]");
  EXPECT_EQ(UserConfigJson("[null, ~, Null]"), "[null,null,null]");
  EXPECT_EQ(UserConfigJson("{a: }"), R"({"a":null})");
  EXPECT_EQ(UserConfigJson("[hello, hello world, /path, 1.2.3, 12abc]"),
            R"(["hello","hello world","/path","1.2.3","12abc"])");
}

TEST(UserConfig, YamlOnePointOneBooleansStayText) {
  // YAML 1.2 (and JSON) know only true/false; "yes"/"no"/"on"/"off" are words.
  EXPECT_EQ(UserConfigJson("[yes, no, on, off, y, n]"), R"(["yes","no","on","off","y","n"])");
}

TEST(UserConfig, QuotedScalarsStayText) {
  EXPECT_EQ(UserConfigJson(R"(["true", '12', "1.5", 'null', "~", ""])"),
            R"(["true","12","1.5","null","~",""])");
  EXPECT_EQ(UserConfigJson("[!!str 12, !!str true]"), R"(["12","true"])");
  EXPECT_EQ(UserConfigJson("{\"n\": \"line\\nbreak\", q: 'it''s'}"),
            R"({"n":"line\nbreak","q":"it's"})");
}

TEST(UserConfig, BlockScalarsStayText) {
  ConfigFile file =
      ParseOk(OneDeployment("    user_config:\n"
                            "      literal: |\n"
                            "        42\n"
                            "      folded: >\n"
                            "        true\n"));
  EXPECT_EQ(file.deployments[0].user_config_json, R"({"literal":"42\n","folded":"true\n"})");
}

TEST(UserConfig, TopLevelScalars) {
  EXPECT_EQ(UserConfigJson("5"), "5");
  EXPECT_EQ(UserConfigJson("hello"), R"("hello")");
  EXPECT_EQ(UserConfigJson("\"5\""), R"("5")");
  EXPECT_EQ(UserConfigJson("false"), "false");
}

TEST(UserConfig, NonTextKeysBecomeTextButListKeysAreAnError) {
  EXPECT_EQ(UserConfigJson("{1: a, true: b}"), R"({"1":"a","true":"b"})");
  EXPECT_THAT(ParseError(OneDeployment("    user_config: {[1, 2]: a}\n")),
              AllOf(StartsWith("config.yaml:4: "), HasSubstr("user_config keys must be text")));
}

TEST(UserConfig, LargeIntegers) {
  EXPECT_EQ(UserConfigJson("[9223372036854775807, -9223372036854775808]"),
            "[9223372036854775807,-9223372036854775808]");
  EXPECT_EQ(UserConfigJson("18446744073709551615"), "18446744073709551615");
  // Past 64 bits it is still a number, as in JSON, though no longer exact.
  EXPECT_EQ(UserConfigJson("200000000000000000000"), "2e+20");
}

TEST(UserConfig, AliasesAreExpanded) {
  ConfigFile file =
      ParseOk(OneDeployment("    user_config:\n"
                            "      base: &b {x: 1}\n"
                            "      copy: *b\n"));
  EXPECT_EQ(file.deployments[0].user_config_json, R"({"base":{"x":1},"copy":{"x":1}})");
}

TEST(UserConfig, DuplicateKeyIsAnError) {
  EXPECT_EQ(ParseError(OneDeployment("    user_config:\n"
                                     "      a: 1\n"
                                     "      a: 2\n")),
            "config.yaml:6: deployment 'app': user_config has key 'a' twice, on lines 5 and 6; "
            "keep one");
}

TEST(UserConfig, InfinityAndNanAreErrors) {
  for (const char* value : {".inf", "-.inf", ".nan", "1e999"}) {
    EXPECT_THAT(ParseError(OneDeployment(std::string("    user_config: [") + value + "]\n")),
                AllOf(StartsWith("config.yaml:4: deployment 'app': user_config: "),
                      HasSubstr("not a finite number"), HasSubstr("quote it")))
        << value;
  }
  EXPECT_EQ(UserConfigJson("'.inf'"), R"(".inf")");
}

TEST(UserConfig, SelfReferentialAliasIsAnErrorNotACrash) {
  EXPECT_THAT(ParseError(OneDeployment("    user_config: &a [1, *a]\n")),
              AllOf(StartsWith("config.yaml:4: "), HasSubstr("user_config is nested more than")));
}

TEST(UserConfig, ExponentialAliasExpansionIsAnError) {
  std::string yaml = OneDeployment("    user_config:\n");
  yaml += "      l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i <= 9; ++i) {
    std::string prev = "*l" + std::to_string(i - 1);
    yaml += "      l" + std::to_string(i) + ": &l" + std::to_string(i) + " [" + prev;
    for (int k = 1; k < 10; ++k) yaml += ", " + prev;
    yaml += "]\n";
  }
  EXPECT_THAT(ParseError(yaml), HasSubstr("user_config has more than 100000 values"));
}

TEST(UserConfig, InvalidUtf8IsAnError) {
  EXPECT_THAT(ParseError(OneDeployment("    user_config: {a: \"\xff\xfe\"}\n")),
              AllOf(StartsWith("config.yaml:4: "), HasSubstr("not valid UTF-8")));
}

// Found by fuzz/deployment_config.cc: a key over 1024 bytes, written as an explicit YAML key,
// made the config's JSON form (the REST API's answers) unreadable by ParseConfig.
TEST(UserConfig, KeysLongerThanYamlReadsBackAreAnError) {
  const std::string longest(1022, 'k');  // 1024 bytes as JSON, with its quotes
  ConfigFile parsed =
      ParseOk(OneDeployment("    user_config:\n      ? " + longest + "\n      : 1\n"));
  ASSERT_EQ(parsed.deployments.size(), 1u);
  auto again = ParseConfig(ConfigToJson(parsed), "again.json");
  ASSERT_TRUE(again.ok()) << again.error();
  EXPECT_EQ(ConfigToJson(*again), ConfigToJson(parsed));

  EXPECT_THAT(ParseError(OneDeployment("    user_config:\n      ? " + longest + "k\n      : 1\n")),
              AllOf(StartsWith("config.yaml:5: deployment 'app': user_config has a key of 1025 "
                               "bytes as JSON text"),
                    HasSubstr("keys may have at most 1024")));
  // Escapes count: 200 control bytes are 1200 bytes of JSON.
  EXPECT_THAT(
      ParseError(OneDeployment("    user_config: {\"" + std::string(200, '\x01') + "\": 1}\n")),
      HasSubstr("has a key of 1202 bytes as JSON text"));
  // From the bus, user_config is JSON text already.
  Deployment d = parsed.deployments[0];
  d.user_config_json = R"({"a": [{"b": {")" + longest + R"(k": 1}}]})";
  EXPECT_THAT(ValidateDeployment(d).message(),
              HasSubstr("user_config keys may have at most 1024 bytes as JSON text"));
  d.user_config_json = R"({"a": [{"b": {")" + longest + R"(": 1}}]})";
  EXPECT_TRUE(ValidateDeployment(d).ok()) << ValidateDeployment(d).message();
}

// ---------------------------------------------------------------------------------------------
// Whole-file structure.

TEST(ParseConfig, InvalidYamlNamesLineAndColumn) {
  EXPECT_THAT(ParseError("deployments:\n"
                         "  - name: [a, b\n"
                         "    runtime: builtin:hello\n"),
              AllOf(StartsWith("config.yaml:"), HasSubstr(": invalid YAML: ")));
  EXPECT_THAT(ParseError("deployments:\n"
                         "  - {name: a}\n"
                         "   bad: 1\n"),
              StartsWith("config.yaml:3:4: invalid YAML: "));
}

TEST(ParseConfig, EmptyFile) {
  EXPECT_THAT(ParseError(""), AllOf(StartsWith("config.yaml:1: "), HasSubstr("no content"),
                                    HasSubstr("deployments")));
  EXPECT_THAT(ParseError("# nothing but a comment\n\n"), HasSubstr("no content"));
  EXPECT_THAT(ParseError("~\n"), HasSubstr("no content"));
}

TEST(ParseConfig, TopLevelListInsteadOfMapping) {
  EXPECT_EQ(ParseError("- name: hello\n"
                       "  runtime: builtin:hello\n"),
            "config.yaml:1: the top level must be a mapping with a 'deployments' list, got a "
            "list; put 'deployments:' on the first line and indent the list under it");
}

TEST(ParseConfig, TopLevelScalar) {
  EXPECT_EQ(ParseError("hello\n"),
            "config.yaml:1: the top level must be a mapping with a 'deployments' list, got "
            "'hello'");
}

TEST(ParseConfig, UnknownTopLevelKeySuggestsTheRightOne) {
  EXPECT_EQ(ParseError("deploymens:\n"
                       "  - {name: a, runtime: builtin:hello}\n"),
            "config.yaml:1: unknown top-level key 'deploymens'; did you mean 'deployments'?");
  EXPECT_EQ(ParseError(OneDeployment("") + "http_options: {port: 8000}\n"),
            "config.yaml:4: unknown top-level key 'http_options'; the only top-level key is "
            "'deployments'");
}

TEST(ParseConfig, MissingDeploymentsKey) {
  // Every top-level key but `deployments` is unknown, so only `{}` can be missing it.
  EXPECT_THAT(ParseError("{}\n"),
              AllOf(StartsWith("config.yaml:1: "), HasSubstr("no 'deployments' list")));
}

TEST(ParseConfig, EmptyDeploymentsList) {
  EXPECT_THAT(ParseError("deployments: []\n"),
              AllOf(StartsWith("config.yaml:1: "), HasSubstr("no deployments listed")));
  EXPECT_THAT(ParseError("\ndeployments:\n"),
              AllOf(StartsWith("config.yaml:2: "), HasSubstr("no deployments listed")));
}

TEST(ParseConfig, DeploymentsMustBeAList) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  hello: {runtime: builtin:hello}\n"),
            "config.yaml:1: 'deployments' must be a list (each item starting with '- '), got a "
            "mapping");
}

TEST(ParseConfig, DeploymentsGivenTwice) {
  EXPECT_THAT(ParseError(OneDeployment("") + "deployments: []\n"),
              AllOf(StartsWith("config.yaml:4: "), HasSubstr("given twice (lines 1 and 4)")));
}

TEST(ParseConfig, EachDeploymentMustBeAMapping) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - {name: a, runtime: builtin:hello}\n"
                       "  - hello\n"),
            "config.yaml:3: deployment #2 must be a mapping of options (name: ..., runtime: "
            "...), got 'hello'");
  EXPECT_THAT(ParseError("deployments:\n"
                         "  - [a, b]\n"),
              AllOf(StartsWith("config.yaml:2: "), HasSubstr("got a list")));
}

TEST(ParseConfig, SecondYamlDocumentIsAnError) {
  EXPECT_THAT(ParseError(OneDeployment("") + "---\n" + OneDeployment("")),
              AllOf(StartsWith("config.yaml:5: "), HasSubstr("second YAML document")));
}

TEST(ParseConfig, ContentOnlyInALaterDocumentIsAnError) {
  EXPECT_THAT(ParseError("---\n---\n" + OneDeployment("")),
              AllOf(StartsWith("config.yaml:3: "), HasSubstr("second YAML document")));
}

// yaml-cpp 0.7's own LoadAll loops forever (allocating) on these.
TEST(ParseConfig, StrayCommaIsAnErrorNotAHang) {
  EXPECT_EQ(ParseError(","),
            "config.yaml:1:1: invalid YAML: cannot parse past this point (a stray ',' outside "
            "[...] or {...}?)");
  EXPECT_THAT(ParseError(OneDeployment("") + "---\n, x\n"), HasSubstr("invalid YAML"));
}

TEST(ParseConfig, DeepNestingIsAnErrorNotACrash) {
  EXPECT_THAT(ParseError(OneDeployment("    user_config: " + std::string(100000, '[') + "\n")),
              HasSubstr("invalid YAML"));
  EXPECT_THAT(ParseError(OneDeployment("    user_config: " + std::string(100, '[') +
                                       std::string(100, ']') + "\n")),
              HasSubstr("user_config is nested more than 64 levels deep"));
}

TEST(ParseConfig, BinaryGarbage) {
  const std::string blobs[] = {
      std::string("\x00\x01\x02\x03\xff\xfe\xfd", 7),
      std::string("\x7f"
                  "ELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                  16),
      "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
      std::string("deployments:\n  - name: \x00\x01\n", 24),
      "\xef\xbb\xbf\xff\xff\xff",
  };
  for (const std::string& blob : blobs) {
    Result<ConfigFile> result = ParseConfig(blob, kSource);
    ASSERT_FALSE(result.ok());
    EXPECT_THAT(result.error(), StartsWith("config.yaml"));
  }
}

TEST(ParseConfig, RandomBytesNeverCrash) {
  std::mt19937 random(12345);
  for (int i = 0; i < 2000; ++i) {
    std::string blob(random() % 200, '\0');
    for (char& c : blob) c = static_cast<char>(random());
    Result<ConfigFile> result = ParseConfig(blob, kSource);
    if (!result.ok()) {
      EXPECT_THAT(result.error(), StartsWith("config.yaml")) << i;
    }
  }
}

TEST(ParseConfig, MutatedConfigsNeverCrash) {
  const std::string valid =
      "deployments:\n"
      "  - name: hello\n"
      "    route_prefix: /hello\n"
      "    runtime: builtin:hello\n"
      "    num_replicas: 2\n"
      "    user_config: {message: \"hi\", list: [1, 2.5, true, ~], nested: {a: &x [b]}, c: *x}\n"
      "    resources: {num_cpus: 0.5, num_gpus: 0, my_accel: 1}\n"
      "    _health_check_period_s: 3\n";
  const std::string alphabet = ":-[]{},&*!|>'\"#?~\n \t0123456789.eE+_abc\xff";
  std::mt19937 random(777);
  for (int i = 0; i < 3000; ++i) {
    std::string text = valid;
    for (int edits = 1 + random() % 4; edits > 0; --edits) {
      const size_t at = random() % text.size();
      const char c = alphabet[random() % alphabet.size()];
      switch (random() % 3) {
        case 0:
          text[at] = c;
          break;
        case 1:
          text.insert(at, 1, c);
          break;
        default:
          text.erase(at, 1);
          break;
      }
    }
    Result<ConfigFile> result = ParseConfig(text, kSource);
    if (!result.ok()) {
      EXPECT_THAT(result.error(), StartsWith("config.yaml")) << text;
    } else {
      EXPECT_TRUE(ValidateDeployments(result->deployments).ok()) << text;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Option names.

TEST(ParseConfig, UnknownOptionSuggestsTheClosest) {
  EXPECT_EQ(ParseError(OneDeployment("    num_replica: 2\n")),
            "config.yaml:4: deployment 'app': unknown option 'num_replica'; did you mean "
            "'num_replicas'?");
  EXPECT_THAT(ParseError(OneDeployment("    Num-Replicas: 2\n")),
              HasSubstr("did you mean 'num_replicas'?"));
  EXPECT_THAT(ParseError(OneDeployment("    replicas: 2\n")),
              HasSubstr("did you mean 'num_replicas'?"));
  EXPECT_THAT(ParseError(OneDeployment("    health_check_period: 2\n")),
              HasSubstr("did you mean 'health_check_period_s'?"));
  EXPECT_THAT(ParseError(OneDeployment("    rout_prefix: /x\n")),
              HasSubstr("did you mean 'route_prefix'?"));
}

TEST(ParseConfig, UnknownOptionFarFromAnyListsTheKnownOptions) {
  EXPECT_EQ(ParseError(OneDeployment("    colour: blue\n")),
            "config.yaml:4: deployment 'app': unknown option 'colour'; known options: name, "
            "version, route_prefix, runtime, num_replicas, max_concurrent_queries, user_config, "
            "health_check_period_s, health_check_timeout_s, graceful_shutdown_wait_loop_s, "
            "graceful_shutdown_timeout_s, resources, artifact, working_dir, command, health_path, "
            "startup_timeout_s, import_path, python_path");
}

TEST(ParseConfig, UnknownOptionsFamiliarFromRayServeGetAdvice) {
  EXPECT_THAT(ParseError(OneDeployment("    max_ongoing_requests: 5\n")),
              HasSubstr("did you mean 'max_concurrent_queries'?"));
  EXPECT_THAT(ParseError(OneDeployment("    autoscaling_config: {min_replicas: 1}\n")),
              HasSubstr("autoscaling is not supported yet"));
}

TEST(ParseConfig, UnknownOptionBeforeTheNameStillNamesTheDeployment) {
  EXPECT_THAT(ParseError("deployments:\n"
                         "  - bogus: 1\n"
                         "    name: later\n"),
              StartsWith("config.yaml:2: deployment 'later': unknown option 'bogus'"));
  EXPECT_THAT(ParseError("deployments:\n"
                         "  - bogus: 1\n"),
              StartsWith("config.yaml:2: deployment #1: unknown option 'bogus'"));
}

TEST(ParseConfig, OptionGivenTwice) {
  EXPECT_EQ(ParseError(OneDeployment("    num_replicas: 1\n"
                                     "    num_replicas: 2\n")),
            "config.yaml:5: deployment 'app': num_replicas is given twice, on lines 4 and 5; "
            "keep one");
}

TEST(ParseConfig, MergeKeysAreNotSupported) {
  EXPECT_THAT(ParseError("base: &base {runtime: builtin:hello}\n"),
              HasSubstr("unknown top-level key 'base'"));
  EXPECT_THAT(ParseError("deployments:\n"
                         "  - {name: a, runtime: builtin:hello, <<: {num_replicas: 2}}\n"),
              HasSubstr("merge keys ('<<') are not supported"));
}

TEST(ParseConfig, OptionNameThatIsNotAWord) {
  EXPECT_THAT(ParseError(OneDeployment("    [a]: 1\n")),
              AllOf(StartsWith("config.yaml:4: "), HasSubstr("option names must be plain words")));
}

// ---------------------------------------------------------------------------------------------
// Option types. Every message names the file, the option's line and the option.

TEST(ParseConfig, WholeNumberOptions) {
  EXPECT_EQ(ParseError(OneDeployment("    num_replicas: two\n")),
            "config.yaml:4: deployment 'app': num_replicas must be a whole number, got 'two'");
  EXPECT_EQ(ParseError(OneDeployment("    num_replicas: 1.5\n")),
            "config.yaml:4: deployment 'app': num_replicas must be a whole number, got '1.5'");
  EXPECT_EQ(ParseError(OneDeployment("    max_concurrent_queries: \"3\"\n")),
            "config.yaml:4: deployment 'app': max_concurrent_queries must be a whole number, "
            "got '3' (quoted, so it is text); remove the quotes");
  EXPECT_EQ(ParseError(OneDeployment("    num_replicas: [1]\n")),
            "config.yaml:4: deployment 'app': num_replicas must be a whole number, got a list");
  EXPECT_EQ(ParseError(OneDeployment("    num_replicas:\n")),
            "config.yaml:4: deployment 'app': num_replicas must be a whole number, got null");
  EXPECT_EQ(ParseError(OneDeployment("    num_replicas: true\n")),
            "config.yaml:4: deployment 'app': num_replicas must be a whole number, got 'true'");
  EXPECT_EQ(ParseError(OneDeployment("    num_replicas: 10000000000\n")),
            "config.yaml:4: deployment 'app': num_replicas is out of range, got '10000000000'");
  EXPECT_THAT(ParseError(OneDeployment("    max_concurrent_queries: 99999999999999999999999\n")),
              HasSubstr("max_concurrent_queries is out of range"));
}

TEST(ParseConfig, NumberOptions) {
  for (const char* option : {"health_check_period_s", "health_check_timeout_s",
                             "graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s"}) {
    EXPECT_EQ(ParseError(OneDeployment(std::string("    ") + option + ": soon\n")),
              std::string("config.yaml:4: deployment 'app': ") + option +
                  " must be a number, got 'soon'");
    EXPECT_EQ(ParseError(OneDeployment(std::string("    ") + option + ": .inf\n")),
              std::string("config.yaml:4: deployment 'app': ") + option +
                  " must be a finite number, got '.inf'");
    EXPECT_THAT(ParseError(OneDeployment(std::string("    ") + option + ": '5'\n")),
                HasSubstr("remove the quotes"));
    EXPECT_THAT(ParseError(OneDeployment(std::string("    ") + option + ": {a: 1}\n")),
                HasSubstr("got a mapping"));
  }
  EXPECT_THAT(ParseError(OneDeployment("    _health_check_timeout_s: x\n")),
              HasSubstr("health_check_timeout_s must be a number"));
}

TEST(ParseConfig, TextOptions) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - name: [a]\n"
                       "    runtime: builtin:hello\n"),
            "config.yaml:2: deployment #1: name must be text, got a list");
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - name: app\n"
                       "    runtime: {builtin: hello}\n"),
            "config.yaml:3: deployment 'app': runtime must be text, got a mapping");
  EXPECT_EQ(ParseError(OneDeployment("    version:\n")),
            "config.yaml:4: deployment 'app': version must be text, got null");
  EXPECT_THAT(ParseError(OneDeployment("    route_prefix: [/a]\n")),
              HasSubstr("route_prefix must be text, got a list"));
}

TEST(ParseConfig, Resources) {
  EXPECT_EQ(ParseError(OneDeployment("    resources: 2\n")),
            "config.yaml:4: deployment 'app': resources must be a mapping of resource name to "
            "amount, e.g. {num_cpus: 1, num_gpus: 0}, got '2'");
  EXPECT_EQ(ParseError(OneDeployment("    resources:\n"
                                     "      num_cpus: 1\n"
                                     "      my_accel: lots\n")),
            "config.yaml:6: deployment 'app': resources.my_accel must be a number, got 'lots'");
  EXPECT_EQ(ParseError(OneDeployment("    resources:\n"
                                     "      num_gpus: 1\n"
                                     "      num_gpus: 2\n")),
            "config.yaml:6: deployment 'app': resources.num_gpus is given twice, on lines 5 and "
            "6; keep one");
  EXPECT_THAT(ParseError(OneDeployment("    resources: {[x]: 1}\n")),
              HasSubstr("resource names must be text"));
}

// ---------------------------------------------------------------------------------------------
// Value rules, as reached through a file (with lines) and through ValidateDeployment.

TEST(ParseConfig, NameIsRequired) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - runtime: builtin:hello\n"),
            "config.yaml:2: deployment #1: name is required; add e.g. 'name: my-app' (1 to 63 "
            "letters, digits, '_' or '-')");
  EXPECT_THAT(ParseError("deployments:\n"
                         "  - name: ''\n"
                         "    runtime: builtin:hello\n"),
              StartsWith("config.yaml:2: deployment #1: name is required"));
}

TEST(ParseConfig, NameCharacters) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - runtime: builtin:hello\n"
                       "    name: hello world\n"),
            "config.yaml:3: deployment 'hello world': name must be 1 to 63 letters, digits, '_' "
            "or '-', starting with a letter or digit; got 'hello world'");
  for (const char* bad : {"_x", "-x", "a.b", "a/b", "caf\xc3\xa9"}) {
    EXPECT_THAT(ParseError(NamedDeployment(std::string("'") + bad + "'")),
                AllOf(StartsWith("config.yaml:2: "), HasSubstr("name must be 1 to 63")))
        << bad;
  }
  EXPECT_EQ(ParseOk(NamedDeployment("0abc")).deployments[0].name, "0abc");
}

TEST(ParseConfig, NameLength) {
  const std::string longest(63, 'a');
  EXPECT_EQ(ParseOk(NamedDeployment(longest)).deployments[0].name, longest);
  EXPECT_THAT(ParseError(NamedDeployment(longest + "a")),
              AllOf(StartsWith("config.yaml:2: "), HasSubstr("name must be 1 to 63")));
}

TEST(ParseConfig, RuntimeRules) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - name: app\n"),
            "config.yaml:2: deployment 'app': runtime is required; known runtimes: "
            "builtin:hello, builtin:echo, native, command, python");
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - name: app\n"
                       "    runtime: builtin:helo\n"),
            "config.yaml:3: deployment 'app': runtime 'builtin:helo' is not known; known "
            "runtimes: builtin:hello, builtin:echo, native, command, python");
}

TEST(ParseConfig, RoutePrefixRules) {
  EXPECT_EQ(ParseError(OneDeployment("    route_prefix: hello\n")),
            "config.yaml:4: deployment 'app': route_prefix must start with '/', got 'hello'; "
            "use '/hello'");
  EXPECT_EQ(ParseError(OneDeployment("    route_prefix: /hello/\n")),
            "config.yaml:4: deployment 'app': route_prefix must not end with '/' (unless it is "
            "just '/'), got '/hello/'; use '/hello'");
  EXPECT_THAT(ParseError(OneDeployment("    route_prefix: ''\n")),
              AllOf(StartsWith("config.yaml:4: "), HasSubstr("route_prefix must start with '/'")));
  for (const char* bad : {"'/a b'", "\"/a\\tb\"", "/a?b", "'/a#b'"}) {
    EXPECT_THAT(ParseError(OneDeployment(std::string("    route_prefix: ") + bad + "\n")),
                AllOf(StartsWith("config.yaml:4: "),
                      HasSubstr("route_prefix must be a URL path without whitespace, '?' or '#'")))
        << bad;
  }
  EXPECT_EQ(ParseOk(OneDeployment("    route_prefix: /\n")).deployments[0].route_prefix, "/");
  EXPECT_EQ(ParseOk(OneDeployment("    route_prefix: /a/b-c\n")).deployments[0].route_prefix,
            "/a/b-c");
}

TEST(ParseConfig, CountRules) {
  EXPECT_EQ(ParseError(OneDeployment("    num_replicas: -1\n")),
            "config.yaml:4: deployment 'app': num_replicas must be >= 0, got -1");
  EXPECT_EQ(ParseError(OneDeployment("    max_concurrent_queries: 0\n")),
            "config.yaml:4: deployment 'app': max_concurrent_queries must be >= 1, got 0");
}

TEST(ParseConfig, DurationRules) {
  EXPECT_EQ(ParseError(OneDeployment("    health_check_period_s: 0\n")),
            "config.yaml:4: deployment 'app': health_check_period_s must be >= 0.05, got 0 "
            "(every replica heartbeats this often)");
  EXPECT_EQ(ParseError(OneDeployment("    _health_check_timeout_s: -1\n")),
            "config.yaml:4: deployment 'app': health_check_timeout_s must be >= 0.05, got -1");
  EXPECT_EQ(ParseError(OneDeployment("    graceful_shutdown_wait_loop_s: -0.5\n")),
            "config.yaml:4: deployment 'app': graceful_shutdown_wait_loop_s must be >= 0, got "
            "-0.5");
  EXPECT_EQ(ParseError(OneDeployment("    graceful_shutdown_timeout_s: -1\n")),
            "config.yaml:4: deployment 'app': graceful_shutdown_timeout_s must be >= 0, got -1");
}

TEST(ParseConfig, ResourceRules) {
  EXPECT_EQ(ParseError(OneDeployment("    resources:\n"
                                     "      num_cpus: -1\n")),
            "config.yaml:5: deployment 'app': resources.num_cpus must be >= 0, got -1");
  EXPECT_EQ(ParseError(OneDeployment("    resources: {num_gpus: -2}\n")),
            "config.yaml:4: deployment 'app': resources.num_gpus must be >= 0, got -2");
  EXPECT_EQ(ParseError(OneDeployment("    resources:\n"
                                     "      num_cpus: 1\n"
                                     "      my_accel: -0.5\n")),
            "config.yaml:6: deployment 'app': resources.my_accel must be >= 0, got -0.5");
  // Found by fuzz/deployment_config.cc: a name too long to read back from the JSON form.
  EXPECT_EQ(ParseOk(OneDeployment("    resources: {" + std::string(253, 'r') + ": 1}\n"))
                .deployments[0]
                .resources.custom.size(),
            1u);
  EXPECT_THAT(ParseError(OneDeployment("    resources:\n      ? " + std::string(1100, 'r') +
                                       "\n      : 1\n")),
              HasSubstr("deployment 'app': resource names must be at most 253 bytes, got 1100"));
}

TEST(ParseConfig, VersionRules) {
  EXPECT_EQ(ParseOk(OneDeployment("    version: " + std::string(128, 'v') + "\n"))
                .deployments[0]
                .version.size(),
            128u);
  EXPECT_EQ(ParseError(OneDeployment("    version: " + std::string(129, 'v') + "\n")),
            "config.yaml:4: deployment 'app': version must be at most 128 characters, got 129");
  EXPECT_EQ(ParseError(OneDeployment("    version: v 1\n")),
            "config.yaml:4: deployment 'app': version must be UTF-8 text without whitespace, "
            "got 'v 1'");
}

TEST(ParseConfig, DuplicateNamesNameBothLines) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - name: a\n"
                       "    runtime: builtin:hello\n"
                       "  - name: a\n"
                       "    runtime: builtin:echo\n"
                       "    route_prefix: /other\n"),
            "config.yaml:4: deployment name 'a' is used twice (line 2 and line 4); deployment "
            "names must be unique");
}

TEST(ParseConfig, DuplicateRoutePrefixesNameBothLines) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - name: a\n"
                       "    runtime: builtin:hello\n"
                       "    route_prefix: /x\n"
                       "  - name: b\n"
                       "    runtime: builtin:echo\n"
                       "    route_prefix: /x\n"),
            "config.yaml:7: route_prefix '/x' is used by both deployment 'a' (line 4) and "
            "deployment 'b' (line 7); give each deployment its own route_prefix");
}

TEST(ParseConfig, ExplicitRoutePrefixCanCollideWithADefaultOne) {
  EXPECT_EQ(ParseError("deployments:\n"
                       "  - name: b\n"
                       "    runtime: builtin:hello\n"
                       "  - name: a\n"
                       "    runtime: builtin:echo\n"
                       "    route_prefix: /b\n"),
            "config.yaml:6: route_prefix '/b' is used by both deployment 'b' (line 2, the "
            "default for its name) and deployment 'a' (line 6); give each deployment its own "
            "route_prefix");
}

TEST(ParseConfig, BinaryNameIsQuotedReadably) {
  const std::string message = ParseError(NamedDeployment("\"a\\x01\\u00ff\""));
  EXPECT_THAT(message, HasSubstr("got 'a\\x01\xc3\xbf'"));
  const std::string long_name = ParseError(NamedDeployment(std::string(500, 'x')));
  EXPECT_THAT(long_name, HasSubstr("xxx...'"));
  EXPECT_LT(long_name.size(), 400u);
}

// ---------------------------------------------------------------------------------------------
// ValidateDeployment(s), for deployments that never were a file.

TEST(ValidateDeployment, ValidDeploymentIsOk) {
  EXPECT_TRUE(ValidateDeployment(ValidDeployment()).ok());
}

TEST(ValidateDeployment, MessagesMakeSenseWithoutAFile) {
  Deployment d = ValidDeployment("x");
  d.num_replicas = -1;
  EXPECT_EQ(ValidateDeployment(d).message(), "deployment 'x': num_replicas must be >= 0, got -1");

  d = ValidDeployment("x");
  d.runtime = "builtin:helo";
  EXPECT_EQ(ValidateDeployment(d).message(),
            "deployment 'x': runtime 'builtin:helo' is not known; known runtimes: "
            "builtin:hello, builtin:echo, native, command, python");

  EXPECT_EQ(ValidateDeployment(Deployment{}).message(),
            "unnamed deployment: name is required; add e.g. 'name: my-app' (1 to 63 letters, "
            "digits, '_' or '-')");
}

TEST(ValidateDeployment, EachRule) {
  struct Case {
    const char* what;
    void (*breakit)(Deployment&);
    const char* expected;
  };
  const Case cases[] = {
      {"name chars", [](Deployment& d) { d.name = "a b"; }, "name must be 1 to 63"},
      {"name length", [](Deployment& d) { d.name = std::string(64, 'n'); }, "name must be"},
      {"version length", [](Deployment& d) { d.version = std::string(129, 'v'); },
       "version must be at most 128 characters, got 129"},
      {"version space", [](Deployment& d) { d.version = "a\tb"; }, "version must be UTF-8"},
      {"version utf8", [](Deployment& d) { d.version = std::string(1, '\xff'); },
       "version must be UTF-8"},
      {"route empty", [](Deployment& d) { d.route_prefix = ""; },
       "route_prefix must start with '/', got ''"},
      {"route slash", [](Deployment& d) { d.route_prefix = "/a//"; },
       "route_prefix must not end with '/' (unless it is just '/'), got '/a//'; use '/a'"},
      {"route query", [](Deployment& d) { d.route_prefix = "/a?x=1"; }, "route_prefix must be"},
      {"route newline", [](Deployment& d) { d.route_prefix = "/a\nb"; }, "got '/a\\x0ab'"},
      {"runtime empty", [](Deployment& d) { d.runtime = ""; }, "runtime is required"},
      {"replicas", [](Deployment& d) { d.num_replicas = -5; }, "num_replicas must be >= 0"},
      {"queries", [](Deployment& d) { d.max_concurrent_queries = -1; },
       "max_concurrent_queries must be >= 1, got -1"},
      {"user_config", [](Deployment& d) { d.user_config_json = "{nope"; },
       "user_config must be JSON text, got '{nope'"},
      {"period", [](Deployment& d) { d.health_check_period_s = 0; },
       "health_check_period_s must be >= 0.05, got 0"},
      {"period nan", [](Deployment& d) { d.health_check_period_s = std::nan(""); },
       "health_check_period_s must be a finite number, got nan"},
      {"timeout inf",
       [](Deployment& d) { d.health_check_timeout_s = std::numeric_limits<double>::infinity(); },
       "health_check_timeout_s must be a finite number, got inf"},
      {"wait loop", [](Deployment& d) { d.graceful_shutdown_wait_loop_s = -1; },
       "graceful_shutdown_wait_loop_s must be >= 0, got -1"},
      {"shutdown", [](Deployment& d) { d.graceful_shutdown_timeout_s = -0.1; },
       "graceful_shutdown_timeout_s must be >= 0, got -0.1"},
      {"cpus", [](Deployment& d) { d.resources.num_cpus = -1; },
       "resources.num_cpus must be >= 0, got -1"},
      {"gpus", [](Deployment& d) { d.resources.num_gpus = -1; },
       "resources.num_gpus must be >= 0, got -1"},
      {"custom", [](Deployment& d) { d.resources.custom["tpu"] = -3; },
       "resources.tpu must be >= 0, got -3"},
      {"custom name", [](Deployment& d) { d.resources.custom[""] = 1; },
       "resource names must be non-empty"},
  };
  for (const Case& c : cases) {
    Deployment d = ValidDeployment();
    c.breakit(d);
    Status status = ValidateDeployment(d);
    EXPECT_FALSE(status.ok()) << c.what;
    EXPECT_THAT(status.message(), HasSubstr(c.expected)) << c.what;
  }
}

TEST(ValidateDeployment, BoundaryValuesAreOk) {
  Deployment d = ValidDeployment(std::string(63, 'n'));
  d.route_prefix = "/";
  d.version = std::string(128, 'v');
  d.num_replicas = 0;
  d.max_concurrent_queries = 1;
  d.user_config_json = "null";
  d.health_check_period_s = 0.05;
  d.health_check_timeout_s = 0.051;  // longer than the period, the tighter bound
  d.graceful_shutdown_wait_loop_s = 0;
  d.graceful_shutdown_timeout_s = 0;
  d.resources.num_cpus = 0;
  d.resources.custom["tpu"] = 0;
  Status status = ValidateDeployment(d);
  EXPECT_TRUE(status.ok()) << status.message();
}

TEST(ValidateDeployment, UpperBoundsAreOkAndBeyondThemIsAnError) {
  Deployment d = ValidDeployment("big");
  d.num_replicas = 10000;
  d.max_concurrent_queries = 10000;
  d.startup_timeout_s = 86400;
  d.health_check_period_s = 43200;  // shorter than the timeout, the tighter bound
  d.health_check_timeout_s = 86400;
  d.graceful_shutdown_wait_loop_s = 86400;
  d.graceful_shutdown_timeout_s = 86400;
  d.resources.num_cpus = 1e6;
  d.resources.num_gpus = 1e6;
  d.resources.custom["tpu"] = 1e6;
  Status status = ValidateDeployment(d);
  EXPECT_TRUE(status.ok()) << status.message();

  struct Case {
    std::function<void(Deployment&)> change;
    std::string error;
  };
  const std::vector<Case> cases = {
      {[](Deployment& x) { x.num_replicas = 2000000000; },
       "num_replicas must be at most 10000 (serve-controller --max-replicas-per-deployment), "
       "got 2000000000"},
      {[](Deployment& x) { x.max_concurrent_queries = 10001; },
       "max_concurrent_queries must be at most 10000 (serve-controller "
       "--max-concurrent-queries), got 10001"},
      {[](Deployment& x) { x.startup_timeout_s = 1e300; }, "startup_timeout_s must be at most"},
      {[](Deployment& x) { x.health_check_timeout_s = 86401; },
       "health_check_timeout_s must be at most"},
      {[](Deployment& x) { x.health_check_period_s = 1e9; },
       "health_check_period_s must be at most"},
      {[](Deployment& x) { x.graceful_shutdown_timeout_s = 1e9; },
       "graceful_shutdown_timeout_s must be at most"},
      {[](Deployment& x) { x.resources.num_cpus = 1e7; }, "resources.num_cpus must be at most"},
      {[](Deployment& x) { x.resources.custom["tpu"] = 1e300; }, "resources.tpu must be at most"},
  };
  for (const auto& c : cases) {
    Deployment changed = ValidDeployment("big");
    c.change(changed);
    EXPECT_THAT(ValidateDeployment(changed).message(), HasSubstr(c.error));
  }
}

// ---------------------------------------------------------------------------------------------
// Bounded inputs (docs/security.md): every bound is refused with a message naming the field.

TEST(BoundedInputs, HealthChecksAreNoMoreFrequentThanTwentyTimesASecond) {
  Deployment d = ValidDeployment();
  d.health_check_period_s = 0.049;
  EXPECT_EQ(ValidateDeployment(d).message(),
            "deployment 'app': health_check_period_s must be >= 0.05, got 0.049 (every replica "
            "heartbeats this often)");
  d = ValidDeployment();
  d.health_check_timeout_s = 0.01;
  EXPECT_EQ(ValidateDeployment(d).message(),
            "deployment 'app': health_check_timeout_s must be >= 0.05, got 0.01");
}

TEST(BoundedInputs, HealthCheckTimeoutIsLongerThanThePeriod) {
  Deployment d = ValidDeployment();
  d.health_check_period_s = 2;
  d.health_check_timeout_s = 1;
  EXPECT_EQ(ValidateDeployment(d).message(),
            "deployment 'app': health_check_timeout_s must be longer than health_check_period_s "
            "(got 1 and 2): a replica heartbeats once a period, so a shorter deadline declares "
            "healthy replicas unhealthy; use at least twice the period, e.g. 4");
  d.health_check_timeout_s = 2;
  EXPECT_THAT(ValidateDeployment(d).message(),
              HasSubstr("health_check_timeout_s must be longer than health_check_period_s"));
  d.health_check_timeout_s = 2.5;
  EXPECT_TRUE(ValidateDeployment(d).ok());
  // Ray's default period (10 s) with a timeout of 5 s is refused in a file too, at its line.
  EXPECT_THAT(ParseError(OneDeployment("    health_check_timeout_s: 5\n")),
              HasSubstr("config.yaml:4: deployment 'app': health_check_timeout_s must be longer"));
}

// A day is the longest duration, so none can overflow when a service turns it into
// milliseconds or nanoseconds (which would make a timeout fire at once).
TEST(BoundedInputs, EveryDurationIsAtMostADay) {
  for (double Deployment::*field :
       {&Deployment::health_check_period_s, &Deployment::health_check_timeout_s,
        &Deployment::graceful_shutdown_wait_loop_s, &Deployment::graceful_shutdown_timeout_s,
        &Deployment::startup_timeout_s}) {
    Deployment d = ValidDeployment();
    d.health_check_period_s = 1;  // shorter than any timeout below a day
    d.*field = 86400;
    if (field == &Deployment::health_check_period_s) d.health_check_timeout_s = 86400;
    EXPECT_EQ(ValidateDeployment(d).ok(), field != &Deployment::health_check_period_s)
        << "a period of a day leaves no longer timeout";
    for (double huge : {86400.5, 9.3e12, 1e300}) {
      d.*field = huge;
      Status status = ValidateDeployment(d);
      EXPECT_FALSE(status.ok()) << huge;
      EXPECT_THAT(status.message(), HasSubstr("_s must be at most 86400, got "));
    }
  }
}

TEST(BoundedInputs, CountsFollowTheLimitsGiven) {
  Limits limits;
  limits.max_replicas = 20'000;
  limits.max_concurrent_queries = 200;
  Deployment d = ValidDeployment();
  d.num_replicas = 20'000;
  EXPECT_FALSE(ValidateDeployment(d).ok()) << "the default limit is 10000";
  EXPECT_TRUE(ValidateDeployment(d, limits).ok());
  d.num_replicas = 20'001;
  EXPECT_EQ(ValidateDeployment(d, limits).message(),
            "deployment 'app': num_replicas must be at most 20000 (serve-controller "
            "--max-replicas-per-deployment), got 20001");
  d = ValidDeployment();
  d.max_concurrent_queries = 201;
  EXPECT_EQ(ValidateDeployment(d, limits).message(),
            "deployment 'app': max_concurrent_queries must be at most 200 (serve-controller "
            "--max-concurrent-queries), got 201");
}

// `"x...x"`: JSON text of exactly `bytes` bytes.
std::string JsonStringOfSize(size_t bytes) {
  std::string text = "\"";
  text.append(bytes - 2, 'x');
  return text.append("\"");
}

TEST(BoundedInputs, UserConfigSizeIsLimited) {
  Deployment d = ValidDeployment();
  d.user_config_json = JsonStringOfSize(1 << 20);
  EXPECT_TRUE(ValidateDeployment(d).ok());
  d.user_config_json = JsonStringOfSize((1 << 20) + 1);
  EXPECT_EQ(ValidateDeployment(d).message(),
            "deployment 'app': user_config must be at most 1048576 bytes as JSON "
            "(serve-controller --max-user-config-bytes), got 1048577");
  Limits small;
  small.max_user_config_bytes = 100;
  d.user_config_json = JsonStringOfSize(101);
  EXPECT_THAT(ValidateDeployment(d, small).message(),
              HasSubstr("user_config must be at most 100 bytes as JSON"));
  d.user_config_json = JsonStringOfSize(100);
  EXPECT_TRUE(ValidateDeployment(d, small).ok());
}

// Runtime command passes user_config in one environment variable, which Linux limits to
// 128 KiB: what it could not pass is refused at deploy, not at the replica's start.
TEST(BoundedInputs, CommandUserConfigMustFitInTheEnvironment) {
  Deployment d = ValidDeployment();
  d.runtime = "command";
  d.command = {"python3", "server.py"};
  d.artifact = "sha256:" + std::string(64, '0');
  EXPECT_EQ(kMaxCommandUserConfigBytes, 131072u - 19u);
  d.user_config_json = JsonStringOfSize(kMaxCommandUserConfigBytes);
  EXPECT_TRUE(ValidateDeployment(d).ok());
  d.user_config_json = JsonStringOfSize(kMaxCommandUserConfigBytes + 1);
  Status status = ValidateDeployment(d);
  EXPECT_THAT(status.message(),
              HasSubstr("deployment 'app': user_config must be at most 131053 bytes as JSON "
                        "for runtime command, got 131054"));
  EXPECT_THAT(status.message(), HasSubstr("SERVE_USER_CONFIG"));
  // Other runtimes take it over the bus: the general limit applies.
  d = ValidDeployment();
  d.user_config_json = JsonStringOfSize(kMaxCommandUserConfigBytes + 1);
  EXPECT_TRUE(ValidateDeployment(d).ok());
}

TEST(BoundedInputs, RoutesUnderTheProxysOwnPrefixAreRefused) {
  for (const char* route : {"/-", "/-/", "/-/healthz", "/-/routes/x", "/-/app"}) {
    Deployment d = ValidDeployment();
    d.route_prefix = route;
    Status status = ValidateDeployment(d);
    EXPECT_FALSE(status.ok()) << route;
    if (std::string(route) != "/-/") {  // that one ends in '/', refused for it first
      std::string expected = "route_prefix '";
      expected.append(route).append("' is reserved: the proxy serves paths under /-/");
      EXPECT_THAT(status.message(), HasSubstr(expected));
    }
  }
  for (const char* route : {"/-a", "/a/-/b", "/--", "/x-"}) {
    Deployment d = ValidDeployment();
    d.route_prefix = route;
    EXPECT_TRUE(ValidateDeployment(d).ok()) << route;
  }
  EXPECT_THAT(ParseError(OneDeployment("    route_prefix: /-/metrics\n")),
              HasSubstr("config.yaml:4: deployment 'app': route_prefix '/-/metrics' is reserved"));
}

// A file is read before the controller is known: it is checked against the widest limits, and
// the controller applies its own.
TEST(BoundedInputs, FilesAreCheckedAgainstTheLimitsGiven) {
  const std::string text = OneDeployment("    num_replicas: 20000\n");
  EXPECT_THAT(ParseError(text), HasSubstr("num_replicas must be at most 10000"));
  EXPECT_TRUE(ParseConfig(text, "config.yaml", {.limits = Limits::Widest()}).ok());
}

// What ConfigToJson and ConfigToYaml write, ParseConfig reads back to the same deployments:
// text that looks like a number, a boolean or null stays text.
TEST(ConfigOutput, JsonAndYamlReadBackToTheSameDeployments) {
  auto parsed = ParseConfig(R"yaml(
deployments:
  - name: tricky
    runtime: command
    command: ["python3", "-c", "print('a: b')", "yes", "12"]
    health_path: /healthz
    artifact: sha256:0000000000000000000000000000000000000000000000000000000000000000
    user_config: {n: 12, s: "12", b: true, t: "yes", z: null, f: 0.1, list: [1, "two"], nested: {"key with: colon": "é"}}
    resources: {num_cpus: 0.25, tpu: 2}
    version: v1
  - name: plain
    runtime: builtin:hello
)yaml",
                            "in.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.error();
  std::string json = ConfigToJson(*parsed);
  auto from_json = ParseConfig(json, "out.json");
  ASSERT_TRUE(from_json.ok()) << from_json.error() << "\n" << json;
  EXPECT_EQ(ConfigToJson(*from_json), json);
  std::string yaml = ConfigToYaml(*parsed);
  auto from_yaml = ParseConfig(yaml, "out.yaml");
  ASSERT_TRUE(from_yaml.ok()) << from_yaml.error() << "\n" << yaml;
  EXPECT_EQ(ConfigToJson(*from_yaml), json) << yaml;
  EXPECT_EQ(from_yaml->deployments[0].user_config_json, parsed->deployments[0].user_config_json);
  EXPECT_THAT(yaml, HasSubstr("- name: \"tricky\""));
}

TEST(ValidateDeployments, EmptySetIsOk) { EXPECT_TRUE(ValidateDeployments({}).ok()); }

TEST(ValidateDeployments, ChecksEachDeployment) {
  Deployment bad = ValidDeployment("b");
  bad.max_concurrent_queries = 0;
  EXPECT_EQ(ValidateDeployments({ValidDeployment("a"), bad}).message(),
            "deployment 'b': max_concurrent_queries must be >= 1, got 0");
}

TEST(ValidateDeployments, DuplicateNames) {
  Deployment second = ValidDeployment("a");
  second.route_prefix = "/other";
  EXPECT_EQ(ValidateDeployments({ValidDeployment("a"), ValidDeployment("b"), second}).message(),
            "deployment name 'a' is used twice (#1 and #3); deployment names must be unique");
}

TEST(ValidateDeployments, DuplicateRoutePrefixes) {
  Deployment b = ValidDeployment("b");
  b.route_prefix = "/a";
  EXPECT_EQ(ValidateDeployments({ValidDeployment("a"), b}).message(),
            "route_prefix '/a' is used by both deployment 'a' (#1) and deployment 'b' (#2); "
            "give each deployment its own route_prefix");
}

TEST(KnownRuntimes, ListsTheBuiltinsThenUserCode) {
  EXPECT_THAT(KnownRuntimes(),
              ElementsAre("builtin:hello", "builtin:echo", "native", "command", "python"));
}

// ---------------------------------------------------------------------------------------------
// User code: native and command.

TEST(ParseConfig, NativeAndCommandDeployments) {
  ConfigFile file = ParseOk(
      "deployments:\n"
      "  - name: counter\n"
      "    runtime: native\n"
      "    artifact: ./build/examples/libcounter.so\n"
      "  - name: model\n"
      "    runtime: command\n"
      "    working_dir: ./examples/python-http\n"
      "    command: [\"/usr/bin/python3\", \"server.py\"]\n"
      "    health_path: /healthz\n"
      "    startup_timeout_s: 90\n");
  ASSERT_EQ(file.deployments.size(), 2u);
  EXPECT_EQ(file.deployments[0].artifact, "./build/examples/libcounter.so");
  EXPECT_EQ(file.deployments[1].working_dir, "./examples/python-http");
  EXPECT_THAT(file.deployments[1].command, ElementsAre("/usr/bin/python3", "server.py"));
  EXPECT_EQ(file.deployments[1].health_path, "/healthz");
  EXPECT_EQ(file.deployments[1].startup_timeout_s, 90);
}

TEST(ParseConfig, CodeOptionRules) {
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: native\n"),
              HasSubstr("runtime native needs 'artifact:'"));
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: command\n"),
              HasSubstr("runtime command needs 'command:'"));
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: command\n"
                         "    command: python3 server.py\n"),
              AllOf(StartsWith("config.yaml:4: "), HasSubstr("must be a list")));
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: builtin:hello\n"
                         "    artifact: x.so\n"),
              AllOf(StartsWith("config.yaml:4: "),
                    HasSubstr("artifact is for runtime native, command or python")));
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: native\n"
                         "    artifact: x.so\n    command: [x]\n"),
              AllOf(StartsWith("config.yaml:5: "), HasSubstr("command is for runtime command")));
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: command\n"
                         "    command: [x]\n    health_path: healthz\n"),
              AllOf(StartsWith("config.yaml:5: "), HasSubstr("must be a URL path")));
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: command\n"
                         "    command: [x]\n    startup_timeout_s: 0\n"),
              HasSubstr("startup_timeout_s must be > 0"));
}

TEST(ParseConfig, PythonDeployments) {
  ConfigFile file = ParseOk(
      "deployments:\n"
      "  - name: iris\n"
      "    runtime: python\n"
      "    import_path: \"model:Iris\"\n"
      "    working_dir: ./examples/python-http\n"
      "    python_path: [venv/lib/python3.11/site-packages, /opt/shared]\n"
      "    user_config: {threshold: 0.5}\n");
  ASSERT_EQ(file.deployments.size(), 1u);
  const Deployment& d = file.deployments[0];
  EXPECT_EQ(d.import_path, "model:Iris");
  EXPECT_THAT(d.python_path, ElementsAre("venv/lib/python3.11/site-packages", "/opt/shared"));
  // Through the bus and back, and through `serve config`.
  Deployment back = FromSpec(ToSpec(d));
  EXPECT_EQ(back.import_path, "model:Iris");
  EXPECT_EQ(back.python_path, d.python_path);
  ConfigFile again = ParseOk(ConfigToYaml(file));
  EXPECT_EQ(again.deployments[0].import_path, "model:Iris");
  EXPECT_EQ(again.deployments[0].python_path, d.python_path);
  EXPECT_EQ(ParseOk(ConfigToJson(file)).deployments[0].python_path, d.python_path);
  // A class in a package, a nested class.
  EXPECT_EQ(ParseOk("deployments:\n  - name: a\n    runtime: python\n"
                    "    import_path: app.models:Outer.Iris\n")
                .deployments[0]
                .import_path,
            "app.models:Outer.Iris");
}

TEST(ParseConfig, PythonOptionRules) {
  const std::string head = "deployments:\n  - name: a\n    runtime: python\n";
  EXPECT_THAT(ParseError(head),
              AllOf(StartsWith("config.yaml:3: "), HasSubstr("runtime python needs 'import_path:'"),
                    HasSubstr("\"model:Iris\"")));
  for (const char* bad : {"model", "model.Iris", "model:", ":Iris", "1model:Iris", "model:Ir-is",
                          "a..b:C", "model:Iris.", "model:Iris:X"}) {
    EXPECT_THAT(ParseError(head + "    import_path: \"" + bad + "\"\n"),
                AllOf(StartsWith("config.yaml:4: "),
                      HasSubstr("import_path must be module:attribute with Python names")))
        << bad;
  }
  EXPECT_THAT(ParseError(head + "    import_path: m:C\n    command: [python3]\n"),
              AllOf(StartsWith("config.yaml:5: "), HasSubstr("command is for runtime command")));
  EXPECT_THAT(ParseError(head + "    import_path: m:C\n    health_path: /healthz\n"),
              HasSubstr("health_path is for runtime command"));
  EXPECT_THAT(ParseError(head + "    import_path: m:C\n    python_path: venv\n"),
              AllOf(StartsWith("config.yaml:5: "), HasSubstr("must be a list of directories")));
  EXPECT_THAT(ParseError(head + "    import_path: m:C\n    python_path: [../elsewhere]\n"),
              HasSubstr("leaves working_dir ('..')"));
  EXPECT_THAT(ParseError(head + "    import_path: m:C\n    python_path: [\"a/../../b\"]\n"),
              HasSubstr("leaves working_dir"));
  EXPECT_THAT(ParseError(head + "    import_path: m:C\n    python_path: [\"\"]\n"),
              HasSubstr("python_path entries must be non-empty"));
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: command\n"
                         "    command: [x]\n    import_path: m:C\n"),
              AllOf(StartsWith("config.yaml:5: "), HasSubstr("import_path is for runtime python")));
  EXPECT_THAT(ParseError("deployments:\n  - name: a\n    runtime: builtin:hello\n"
                         "    python_path: [x]\n"),
              HasSubstr("python_path is for runtime native, command or python"));
}

TEST(ValidateArtifactReference, OnlyDigestsReachTheController) {
  Deployment d = ValidDeployment("x");
  d.runtime = "native";
  d.artifact = "sha256:" + std::string(64, 'a');
  EXPECT_TRUE(ValidateArtifactReference(d).ok());
  d.artifact = "./libx.so";
  EXPECT_THAT(ValidateArtifactReference(d).message(),
              AllOf(HasSubstr("sha256:<64 hex digits>"), HasSubstr("serve deploy FILE")));
  d.artifact = "sha256:" + std::string(64, 'A');
  EXPECT_FALSE(ValidateArtifactReference(d).ok());
  d.artifact.clear();
  d.runtime = "command";
  d.command = {"x"};
  d.working_dir = "./dir";
  EXPECT_THAT(ValidateArtifactReference(d).message(), HasSubstr("local path"));
}

// ---------------------------------------------------------------------------------------------
// Files.

class LoadConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("config_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(LoadConfigFileTest, ReadsAndParses) {
  const std::string path = Write("serve.yaml", OneDeployment("    num_replicas: 3\n"));
  Result<ConfigFile> result = LoadConfigFile(path);
  ASSERT_TRUE(result.ok()) << result.error();
  ASSERT_EQ(result->deployments.size(), 1u);
  EXPECT_EQ(result->deployments[0].num_replicas, 3);
}

TEST_F(LoadConfigFileTest, ErrorsStartWithThePath) {
  const std::string path = Write("serve.yaml", OneDeployment("    num_replicas: -1\n"));
  Result<ConfigFile> result = LoadConfigFile(path);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error(), path + ":4: deployment 'app': num_replicas must be >= 0, got -1");
}

TEST_F(LoadConfigFileTest, MissingFileNamesPathAndReason) {
  const std::string path = (dir_ / "missing.yaml").string();
  Result<ConfigFile> result = LoadConfigFile(path);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error(), "cannot read config file '" + path + "': No such file or directory");
}

TEST_F(LoadConfigFileTest, DirectoryIsAnError) {
  Result<ConfigFile> result = LoadConfigFile(dir_.string());
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.error(), AllOf(HasSubstr(dir_.string()), HasSubstr("Is a directory")));
}

TEST_F(LoadConfigFileTest, EmptyFile) {
  const std::string path = Write("empty.yaml", "");
  Result<ConfigFile> result = LoadConfigFile(path);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.error(), AllOf(StartsWith(path + ":1: "), HasSubstr("no content")));
}

TEST_F(LoadConfigFileTest, BinaryFile) {
  std::string garbage;
  std::mt19937 random(99);
  for (int i = 0; i < 4096; ++i) garbage += static_cast<char>(random());
  const std::string path = Write("model.bin", garbage);
  Result<ConfigFile> result = LoadConfigFile(path);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.error(), StartsWith(path + ":"));
}

TEST_F(LoadConfigFileTest, OversizedFileIsRefused) {
  const std::string path = Write("huge.yaml", std::string((16 << 20) + 1, '#'));
  Result<ConfigFile> result = LoadConfigFile(path);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.error(), AllOf(HasSubstr(path), HasSubstr("larger than 16 MiB")));
}

}  // namespace
}  // namespace serve::config
