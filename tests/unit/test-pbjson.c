/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The proto3 JSON codec and the validated binary codec. Wire shapes come from envd's examples
 * (docs/protocol-envd.md); a small hand-written descriptor (`test.Scalars`) covers the types our
 * own protos do not use (float, double, repeated scalars, integer map keys, recursion).
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "filesystem/filesystem.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "harness.h"
#include "process/process.pb-c.h"
#include "rpc/pbjson.h"

/* 2026-08-22T10:00:00Z, the mtime in the ListDir example. */
#define EXAMPLE_MTIME 1787392800

/* No cap to speak of for buffers in tests that are not about the cap. */
#define TEST_BUF_MAX (64u << 20)

/* ---- helpers ---- */

static char *encode(const void *msg)
{
    struct buf b;
    buf_init(&b, TEST_BUF_MAX);
    ASSERT_OK(pbjson_encode(msg, &b));
    return buf_steal(&b, NULL);
}

static void *decode_ok(const ProtobufCMessageDescriptor *desc, const char *json)
{
    ProtobufCMessage *m = NULL;
    char *err = NULL;
    int r = pbjson_decode(desc, json, strlen(json), &m, &err);
    if (r < 0)
        test_fail(__FILE__, __LINE__, "decoding %s failed: %d (%s)", json, r, err ? err : "?");
    ASSERT_NULL(err);
    ASSERT_NOT_NULL(m);
    ASSERT_TRUE(m->descriptor == desc);
    return m;
}

/* Decodes text that must fail with -EINVAL; returns the error message. */
static char *decode_err(const ProtobufCMessageDescriptor *desc, const char *json, size_t len)
{
    ProtobufCMessage *m = NULL;
    char *err = NULL;
    int r = pbjson_decode(desc, json, len, &m, &err);
    if (r != -EINVAL)
        test_fail(__FILE__, __LINE__, "decoding %.*s: got %d, want -EINVAL", (int) len, json, r);
    ASSERT_NULL(m);
    ASSERT_NOT_NULL(err);
    return err;
}

/* Asserts that `json` fails and that the error message contains `want`. */
#define ASSERT_DECODE_ERR(desc, json, want)                                                  \
    do {                                                                                     \
        char *_e = decode_err((desc), (json), strlen(json));                                 \
        if (!strstr(_e, (want)))                                                             \
            test_fail(__FILE__, __LINE__, "error for %s:\n  got:  \"%s\"\n  want: \"…%s…\"", \
                      (json), _e, (want));                                                   \
        free(_e);                                                                            \
    } while (0)

/* decode → encode must give back exactly `json` (which is written canonically). */
#define ASSERT_JSON_ROUND_TRIP(desc, json)                \
    do {                                                  \
        ProtobufCMessage *_m = decode_ok((desc), (json)); \
        char *_out = encode(_m);                          \
        ASSERT_STR_EQ(_out, (json));                      \
        ProtobufCMessage *_m2 = decode_ok((desc), _out);  \
        char *_out2 = encode(_m2);                        \
        ASSERT_STR_EQ(_out2, _out);                       \
        free(_out2);                                      \
        free(_out);                                       \
        protobuf_c_message_free_unpacked(_m2, NULL);      \
        protobuf_c_message_free_unpacked(_m, NULL);       \
    } while (0)

#define ASSERT_ENCODES(msg, want)  \
    do {                           \
        char *_j = encode(msg);    \
        ASSERT_STR_EQ(_j, (want)); \
        free(_j);                  \
    } while (0)

static int proto_decode(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                        ProtobufCMessage **ret, char **ret_error)
{
    *ret = NULL;
    *ret_error = NULL;
    return pbproto_decode(desc, data, len, ret, ret_error);
}

/* Binary input that must fail; the error must name `want`. */
#define ASSERT_PROTO_ERR(desc, bytes, want)                                             \
    do {                                                                                \
        ProtobufCMessage *_m;                                                           \
        char *_e;                                                                       \
        ASSERT_ERR(proto_decode((desc), (bytes), sizeof(bytes) - 1, &_m, &_e), EINVAL); \
        ASSERT_NULL(_m);                                                                \
        ASSERT_NOT_NULL(_e);                                                            \
        if (!strstr(_e, (want)))                                                        \
            test_fail(__FILE__, __LINE__, "got \"%s\", want \"…%s…\"", _e, (want));     \
        free(_e);                                                                       \
    } while (0)

/* ---- test.Scalars: a hand-built descriptor for the types our protos lack ---- */

struct t_ikeys_entry {
    ProtobufCMessage base;
    int32_t key;
    char *value;
};

struct t_scalars {
    ProtobufCMessage base;
    double d;
    float f;
    int32_t i32;
    uint64_t u64;
    size_t n_nums;
    int32_t *nums;
    size_t n_flags;
    protobuf_c_boolean *flags;
    size_t n_ikeys;
    struct t_ikeys_entry **ikeys;
    struct t_scalars *child;
    int64_t sf64;
};

static const ProtobufCMessageDescriptor t_scalars_desc;
static const ProtobufCMessageDescriptor t_ikeys_entry_desc;

static void t_ikeys_entry_init(ProtobufCMessage *m)
{
    static const struct t_ikeys_entry init = {PROTOBUF_C_MESSAGE_INIT(&t_ikeys_entry_desc), 0,
                                              (char *) protobuf_c_empty_string};
    *(struct t_ikeys_entry *) m = init;
}

static void t_scalars_init(ProtobufCMessage *m)
{
    static const struct t_scalars init = {PROTOBUF_C_MESSAGE_INIT(&t_scalars_desc)};
    *(struct t_scalars *) m = init;
}

static const ProtobufCFieldDescriptor t_ikeys_entry_fields[] = {
        {"key", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_INT32, 0,
         offsetof(struct t_ikeys_entry, key), NULL, NULL, 0, 0, NULL, NULL},
        {"value", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_STRING, 0,
         offsetof(struct t_ikeys_entry, value), NULL, &protobuf_c_empty_string, 0, 0, NULL, NULL},
};
static const unsigned t_ikeys_entry_by_name[] = {0, 1};
static const ProtobufCIntRange t_ikeys_entry_ranges[] = {{1, 0}, {0, 2}};
static const ProtobufCMessageDescriptor t_ikeys_entry_desc = {
        PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
        "test.Scalars.IkeysEntry",
        "IkeysEntry",
        "Test__Scalars__IkeysEntry",
        "test",
        sizeof(struct t_ikeys_entry),
        2,
        t_ikeys_entry_fields,
        t_ikeys_entry_by_name,
        1,
        t_ikeys_entry_ranges,
        t_ikeys_entry_init,
        NULL,
        NULL,
        NULL,
};

static const ProtobufCFieldDescriptor t_scalars_fields[] = {
        {"d", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_DOUBLE, 0, offsetof(struct t_scalars, d),
         NULL, NULL, 0, 0, NULL, NULL},
        {"f", 2, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_FLOAT, 0, offsetof(struct t_scalars, f),
         NULL, NULL, 0, 0, NULL, NULL},
        {"i32", 3, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_INT32, 0, offsetof(struct t_scalars, i32),
         NULL, NULL, 0, 0, NULL, NULL},
        {"u64", 4, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_UINT64, 0,
         offsetof(struct t_scalars, u64), NULL, NULL, 0, 0, NULL, NULL},
        {"nums", 5, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_INT32,
         offsetof(struct t_scalars, n_nums), offsetof(struct t_scalars, nums), NULL, NULL,
         PROTOBUF_C_FIELD_FLAG_PACKED, 0, NULL, NULL},
        {"flags", 6, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_BOOL,
         offsetof(struct t_scalars, n_flags), offsetof(struct t_scalars, flags), NULL, NULL, 0, 0,
         NULL, NULL},
        {"ikeys", 7, PROTOBUF_C_LABEL_REPEATED, PROTOBUF_C_TYPE_MESSAGE,
         offsetof(struct t_scalars, n_ikeys), offsetof(struct t_scalars, ikeys),
         &t_ikeys_entry_desc, NULL, 0, 0, NULL, NULL},
        {"child", 8, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_MESSAGE, 0,
         offsetof(struct t_scalars, child), &t_scalars_desc, NULL, 0, 0, NULL, NULL},
        {"sf64", 9, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_SFIXED64, 0,
         offsetof(struct t_scalars, sf64), NULL, NULL, 0, 0, NULL, NULL},
};
/* child, d, f, flags, i32, ikeys, nums, sf64, u64 */
static const unsigned t_scalars_by_name[] = {7, 0, 1, 5, 2, 6, 4, 8, 3};
static const ProtobufCIntRange t_scalars_ranges[] = {{1, 0}, {0, 9}};
static const ProtobufCMessageDescriptor t_scalars_desc = {
        PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
        "test.Scalars",
        "Scalars",
        "Test__Scalars",
        "test",
        sizeof(struct t_scalars),
        9,
        t_scalars_fields,
        t_scalars_by_name,
        1,
        t_scalars_ranges,
        t_scalars_init,
        NULL,
        NULL,
        NULL,
};

/* ---- envd's examples ---- */

TEST(start_request_decode)
{
    Process__StartRequest *req =
            decode_ok(&process__start_request__descriptor,
                      "{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\",\"echo "
                      "hi\"]},\"stdin\":false}");
    ASSERT_NOT_NULL(req->process);
    ASSERT_STR_EQ(req->process->cmd, "/bin/bash");
    ASSERT_UEQ(req->process->n_args, 3);
    ASSERT_STR_EQ(req->process->args[0], "-l");
    ASSERT_STR_EQ(req->process->args[1], "-c");
    ASSERT_STR_EQ(req->process->args[2], "echo hi");
    ASSERT_UEQ(req->process->n_envs, 0);
    ASSERT_EQ(req->process->_cwd_case, PROCESS__PROCESS_CONFIG___CWD__NOT_SET);
    /* Explicit presence: false was given, which is not the same as absent (absent = pipe). */
    ASSERT_EQ(req->_stdin_case, PROCESS__START_REQUEST___STDIN_STDIN);
    ASSERT_EQ(req->stdin, 0);
    ASSERT_EQ(req->_tag_case, PROCESS__START_REQUEST___TAG__NOT_SET);
    ASSERT_EQ(req->_pty_case, PROCESS__START_REQUEST___PTY__NOT_SET);
    protobuf_c_message_free_unpacked(&req->base, NULL);

    req = decode_ok(&process__start_request__descriptor,
                    "{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-i\",\"-l\"],"
                    "\"envs\":{\"TERM\":\"xterm-256color\"},\"cwd\":\"/home/user\"},"
                    "\"pty\":{\"size\":{\"cols\":80,\"rows\":24}},\"tag\":\"t1\",\"stdin\":true}");
    ASSERT_EQ(req->process->_cwd_case, PROCESS__PROCESS_CONFIG___CWD_CWD);
    ASSERT_STR_EQ(req->process->cwd, "/home/user");
    ASSERT_UEQ(req->process->n_envs, 1);
    ASSERT_STR_EQ(req->process->envs[0]->key, "TERM");
    ASSERT_STR_EQ(req->process->envs[0]->value, "xterm-256color");
    ASSERT_EQ(req->_pty_case, PROCESS__START_REQUEST___PTY_PTY);
    ASSERT_UEQ(req->pty->size->cols, 80);
    ASSERT_UEQ(req->pty->size->rows, 24);
    ASSERT_EQ(req->_tag_case, PROCESS__START_REQUEST___TAG_TAG);
    ASSERT_STR_EQ(req->tag, "t1");
    ASSERT_EQ(req->stdin, 1);
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

TEST(process_event_encode)
{
    Process__ProcessEvent__StartEvent start = PROCESS__PROCESS_EVENT__START_EVENT__INIT;
    Process__ProcessEvent ev = PROCESS__PROCESS_EVENT__INIT;
    Process__StartResponse resp = PROCESS__START_RESPONSE__INIT;
    resp.event = &ev;

    start.pid = 412;
    ev.event_case = PROCESS__PROCESS_EVENT__EVENT_START;
    ev.start = &start;
    ASSERT_ENCODES(&resp, "{\"event\":{\"start\":{\"pid\":412}}}");

    Process__ProcessEvent__DataEvent data = PROCESS__PROCESS_EVENT__DATA_EVENT__INIT;
    data.output_case = PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_STDOUT;
    data.stdout.data = (uint8_t *) "hi\n";
    data.stdout.len = 3;
    ev.event_case = PROCESS__PROCESS_EVENT__EVENT_DATA;
    ev.data = &data;
    ASSERT_ENCODES(&resp, "{\"event\":{\"data\":{\"stdout\":\"aGkK\"}}}");

    Process__ProcessEvent__EndEvent end = PROCESS__PROCESS_EVENT__END_EVENT__INIT;
    end.exited = 1;
    end.status = "exit status 0";
    ev.event_case = PROCESS__PROCESS_EVENT__EVENT_END;
    ev.end = &end;
    ASSERT_ENCODES(&resp, "{\"event\":{\"end\":{\"exited\":true,\"status\":\"exit status 0\"}}}");

    Process__ProcessEvent__KeepAlive ka = PROCESS__PROCESS_EVENT__KEEP_ALIVE__INIT;
    ev.event_case = PROCESS__PROCESS_EVENT__EVENT_KEEPALIVE;
    ev.keepalive = &ka;
    ASSERT_ENCODES(&resp, "{\"event\":{\"keepalive\":{}}}");

    /* An empty data chunk is still the member that is set. */
    data.stdout.len = 0;
    data.stdout.data = NULL;
    ev.event_case = PROCESS__PROCESS_EVENT__EVENT_DATA;
    ev.data = &data;
    ASSERT_ENCODES(&resp, "{\"event\":{\"data\":{\"stdout\":\"\"}}}");

    Process__StartResponse empty = PROCESS__START_RESPONSE__INIT;
    ASSERT_ENCODES(&empty, "{}");
}

TEST(end_event_negative_exit_code)
{
    Process__ProcessEvent__EndEvent end = PROCESS__PROCESS_EVENT__END_EVENT__INIT;
    end.exit_code = -1;
    end.status = "signal: killed";
    end._error_case = PROCESS__PROCESS_EVENT__END_EVENT___ERROR_ERROR;
    end.error = "signal: killed";
    ASSERT_ENCODES(&end,
                   "{\"exitCode\":-1,\"status\":\"signal: killed\",\"error\":\"signal: killed\"}");

    /* sint32 is zigzag on the wire: -1 is 0x01, not ten bytes of 0xff. */
    struct buf b;
    buf_init(&b, TEST_BUF_MAX);
    end._error_case = PROCESS__PROCESS_EVENT__END_EVENT___ERROR__NOT_SET;
    end.status = "";
    ASSERT_OK(pbproto_encode(&end.base, &b));
    ASSERT_UEQ(b.len, 2);
    ASSERT_MEM_EQ(b.data, "\x08\x01", 2);
    buf_free(&b);

    Process__ProcessEvent__EndEvent *d = decode_ok(&process__process_event__end_event__descriptor,
                                                   "{\"exitCode\":-1,\"exited\":false}");
    ASSERT_EQ(d->exit_code, -1);
    ASSERT_EQ(d->exited, 0);
    ASSERT_STR_EQ(d->status, "");
    ASSERT_EQ(d->_error_case, PROCESS__PROCESS_EVENT__END_EVENT___ERROR__NOT_SET);
    protobuf_c_message_free_unpacked(&d->base, NULL);
}

TEST(entry_info_encode)
{
    Google__Protobuf__Timestamp mtime = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
    mtime.seconds = EXAMPLE_MTIME;
    mtime.nanos = 123456789;
    Filesystem__EntryInfo e = FILESYSTEM__ENTRY_INFO__INIT;
    e.name = "file1.txt";
    e.type = FILESYSTEM__FILE_TYPE__FILE_TYPE_FILE;
    e.path = "/home/user/test_directory/file1.txt";
    e.size = 13;
    e.mode = 0644;
    e.permissions = "-rw-r--r--";
    e.owner = "user";
    e.group = "user";
    e.modified_time = &mtime;
    Filesystem__EntryInfo *entries[] = {&e};
    Filesystem__ListDirResponse resp = FILESYSTEM__LIST_DIR_RESPONSE__INIT;
    resp.n_entries = 1;
    resp.entries = entries;
    static const char want[] =
            "{\"entries\":[{\"name\":\"file1.txt\",\"type\":\"FILE_TYPE_FILE\","
            "\"path\":\"/home/user/test_directory/file1.txt\",\"size\":\"13\",\"mode\":420,"
            "\"permissions\":\"-rw-r--r--\",\"owner\":\"user\",\"group\":\"user\","
            "\"modifiedTime\":\"2026-08-22T10:00:00.123456789Z\"}]}";
    ASSERT_ENCODES(&resp, want);
    ASSERT_JSON_ROUND_TRIP(&filesystem__list_dir_response__descriptor, want);

    /* Symlink target and metadata (a map) come after, in field-number order. */
    e._symlink_target_case = FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET_SYMLINK_TARGET;
    e.symlink_target = "/x";
    Filesystem__EntryInfo__MetadataEntry m1 = FILESYSTEM__ENTRY_INFO__METADATA_ENTRY__INIT;
    m1.key = "k";
    m1.value = "v";
    Filesystem__EntryInfo__MetadataEntry *md[] = {&m1};
    e.n_metadata = 1;
    e.metadata = md;
    e.modified_time = NULL;
    e.size = 0;
    ASSERT_ENCODES(&e, "{\"name\":\"file1.txt\",\"type\":\"FILE_TYPE_FILE\","
                       "\"path\":\"/home/user/test_directory/file1.txt\",\"mode\":420,"
                       "\"permissions\":\"-rw-r--r--\",\"owner\":\"user\",\"group\":\"user\","
                       "\"symlinkTarget\":\"/x\",\"metadata\":{\"k\":\"v\"}}");
}

TEST(list_dir_request_decode)
{
    Filesystem__ListDirRequest *r = decode_ok(&filesystem__list_dir_request__descriptor,
                                              "{\"path\":\"test_directory\",\"depth\":1}");
    ASSERT_STR_EQ(r->path, "test_directory");
    ASSERT_UEQ(r->depth, 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* Omitted fields keep their defaults (and the shared empty string). */
    r = decode_ok(&filesystem__list_dir_request__descriptor, "{}");
    ASSERT_STR_EQ(r->path, "");
    ASSERT_TRUE(r->path == protobuf_c_empty_string);
    ASSERT_UEQ(r->depth, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

TEST(watch_events_encode)
{
    Filesystem__WatchDirResponse__StartEvent st = FILESYSTEM__WATCH_DIR_RESPONSE__START_EVENT__INIT;
    Filesystem__WatchDirResponse resp = FILESYSTEM__WATCH_DIR_RESPONSE__INIT;
    resp.event_case = FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_START;
    resp.start = &st;
    ASSERT_ENCODES(&resp, "{\"start\":{}}");

    Filesystem__FilesystemEvent fe = FILESYSTEM__FILESYSTEM_EVENT__INIT;
    fe.name = "sub/f.txt";
    fe.type = FILESYSTEM__EVENT_TYPE__EVENT_TYPE_WRITE;
    resp.event_case = FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_FILESYSTEM;
    resp.filesystem = &fe;
    ASSERT_ENCODES(&resp,
                   "{\"filesystem\":{\"name\":\"sub/f.txt\",\"type\":\"EVENT_TYPE_WRITE\"}}");
}

/* ---- presence and names ---- */

TEST(optional_presence)
{
    Process__StartRequest req = PROCESS__START_REQUEST__INIT;
    ASSERT_ENCODES(&req, "{}");
    req._stdin_case = PROCESS__START_REQUEST___STDIN_STDIN;
    req.stdin = 0;
    ASSERT_ENCODES(&req, "{\"stdin\":false}");
    req._tag_case = PROCESS__START_REQUEST___TAG_TAG;
    req.tag = "";
    ASSERT_ENCODES(&req, "{\"tag\":\"\",\"stdin\":false}");

    /* Implicit presence: defaults are left out. */
    Filesystem__WatchDirRequest w = FILESYSTEM__WATCH_DIR_REQUEST__INIT;
    ASSERT_ENCODES(&w, "{}");
    w.include_entry = 1;
    ASSERT_ENCODES(&w, "{\"includeEntry\":true}");

    ASSERT_JSON_ROUND_TRIP(&process__start_request__descriptor, "{\"tag\":\"\",\"stdin\":false}");
    ASSERT_JSON_ROUND_TRIP(&process__process_selector__descriptor, "{\"pid\":0}");

    /* null means the default: not set at all. */
    Process__StartRequest *d = decode_ok(&process__start_request__descriptor,
                                         "{\"process\":null,\"stdin\":null,\"tag\":null}");
    ASSERT_NULL(d->process);
    ASSERT_EQ(d->_stdin_case, PROCESS__START_REQUEST___STDIN__NOT_SET);
    ASSERT_EQ(d->_tag_case, PROCESS__START_REQUEST___TAG__NOT_SET);
    protobuf_c_message_free_unpacked(&d->base, NULL);
}

TEST(proto_names_accepted)
{
    Process__ProcessEvent__EndEvent *e =
            decode_ok(&process__process_event__end_event__descriptor, "{\"exit_code\":3}");
    ASSERT_EQ(e->exit_code, 3);
    protobuf_c_message_free_unpacked(&e->base, NULL);

    Filesystem__WatchDirRequest *w =
            decode_ok(&filesystem__watch_dir_request__descriptor,
                      "{\"path\":\"/\",\"include_entry\":true,\"allowNetworkMounts\":true}");
    ASSERT_EQ(w->include_entry, 1);
    ASSERT_EQ(w->allow_network_mounts, 1);
    ASSERT_EQ(w->recursive, 0);
    protobuf_c_message_free_unpacked(&w->base, NULL);
}

TEST(both_names_rejected)
{
    ASSERT_DECODE_ERR(&process__process_event__end_event__descriptor,
                      "{\"exitCode\":1,\"exit_code\":1}", "'exit_code'");
    ASSERT_DECODE_ERR(&process__process_event__end_event__descriptor,
                      "{\"exit_code\":1,\"exitCode\":2}", "also given as 'exit_code'");
    /* Even when one of them is null. */
    ASSERT_DECODE_ERR(&filesystem__watch_dir_request__descriptor,
                      "{\"include_entry\":null,\"includeEntry\":true}", "includeEntry");
}

TEST(duplicate_key_rejected)
{
    ASSERT_DECODE_ERR(&filesystem__list_dir_request__descriptor, "{\"path\":\"a\",\"path\":\"b\"}",
                      "invalid JSON: duplicate");
    ASSERT_DECODE_ERR(&process__start_request__descriptor,
                      "{\"process\":{\"envs\":{\"A\":\"1\",\"A\":\"2\"}}}", "duplicate");
}

TEST(unknown_fields_ignored)
{
    Filesystem__ListDirRequest *r = decode_ok(
            &filesystem__list_dir_request__descriptor,
            "{\"path\":\"x\",\"bogus\":{\"a\":[1,2,{\"b\":null}]},\"Depth\":5,\"depth\":2}");
    ASSERT_STR_EQ(r->path, "x");
    ASSERT_UEQ(r->depth, 2);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

TEST(oneof_conflict_rejected)
{
    ASSERT_DECODE_ERR(&process__process_selector__descriptor, "{\"pid\":1,\"tag\":\"x\"}",
                      "'tag': another field of the same oneof is already set");
    ASSERT_DECODE_ERR(&process__process_event__descriptor, "{\"start\":{\"pid\":1},\"end\":{}}",
                      "'end'");
    /* A null member does not count as set. */
    Process__ProcessSelector *s =
            decode_ok(&process__process_selector__descriptor, "{\"pid\":null,\"tag\":\"x\"}");
    ASSERT_EQ(s->selector_case, PROCESS__PROCESS_SELECTOR__SELECTOR_TAG);
    ASSERT_STR_EQ(s->tag, "x");
    protobuf_c_message_free_unpacked(&s->base, NULL);
}

/* ---- scalar types ---- */

TEST(enum_values)
{
    Process__SendSignalRequest *r =
            decode_ok(&process__send_signal_request__descriptor, "{\"signal\":9}");
    ASSERT_EQ(r->signal, PROCESS__SIGNAL__SIGNAL_SIGKILL);
    ASSERT_ENCODES(r, "{\"signal\":\"SIGNAL_SIGKILL\"}");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    r = decode_ok(&process__send_signal_request__descriptor, "{\"signal\":\"SIGNAL_SIGTERM\"}");
    ASSERT_EQ(r->signal, PROCESS__SIGNAL__SIGNAL_SIGTERM);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* Open enums: an unknown number is kept and written back as a number. */
    r = decode_ok(&process__send_signal_request__descriptor, "{\"signal\":42}");
    ASSERT_EQ(r->signal, 42);
    ASSERT_ENCODES(r, "{\"signal\":42}");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    ASSERT_DECODE_ERR(&process__send_signal_request__descriptor, "{\"signal\":\"SIGKILL\"}",
                      "invalid value for field 'signal': unknown value 'SIGKILL' for enum "
                      "process.Signal");
    ASSERT_DECODE_ERR(&process__send_signal_request__descriptor, "{\"signal\":\"9\"}",
                      "unknown value '9'");
    ASSERT_DECODE_ERR(&process__send_signal_request__descriptor, "{\"signal\":true}", "boolean");
    ASSERT_DECODE_ERR(&process__send_signal_request__descriptor, "{\"signal\":9.5}", "signal");
    ASSERT_DECODE_ERR(&process__send_signal_request__descriptor, "{\"signal\":4294967296}",
                      "out of range");
}

TEST(int64_number_and_string)
{
    static const char *const inputs[] = {"{\"size\":13}", "{\"size\":\"13\"}", "{\"size\":13.0}",
                                         "{\"size\":1.3e1}", "{\"size\":\"1.3e1\"}"};
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        Filesystem__EntryInfo *e = decode_ok(&filesystem__entry_info__descriptor, inputs[i]);
        ASSERT_EQ(e->size, 13);
        ASSERT_ENCODES(e, "{\"size\":\"13\"}");
        protobuf_c_message_free_unpacked(&e->base, NULL);
    }

    Filesystem__EntryInfo *e =
            decode_ok(&filesystem__entry_info__descriptor, "{\"size\":\"-9223372036854775808\"}");
    ASSERT_TRUE(e->size == INT64_MIN);
    ASSERT_ENCODES(e, "{\"size\":\"-9223372036854775808\"}");
    protobuf_c_message_free_unpacked(&e->base, NULL);

    e = decode_ok(&filesystem__entry_info__descriptor, "{\"size\":9223372036854775807}");
    ASSERT_TRUE(e->size == INT64_MAX);
    protobuf_c_message_free_unpacked(&e->base, NULL);

    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor, "{\"size\":\"9223372036854775808\"}",
                      "out of range for int64");
    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor, "{\"size\":1.5}",
                      "invalid value for field 'size': expected int64");
    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor, "{\"size\":\" 13\"}", "size");
    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor, "{\"size\":\"013\"}", "size");
    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor, "{\"size\":\"\"}", "size");
    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor, "{\"size\":true}", "got boolean");
}

TEST(int32_ranges)
{
    Filesystem__ListDirRequest *r =
            decode_ok(&filesystem__list_dir_request__descriptor, "{\"depth\":\"4294967295\"}");
    ASSERT_UEQ(r->depth, UINT32_MAX);
    ASSERT_ENCODES(r, "{\"depth\":4294967295}");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    r = decode_ok(&filesystem__list_dir_request__descriptor, "{\"depth\":-0}");
    ASSERT_UEQ(r->depth, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);

    ASSERT_DECODE_ERR(&filesystem__list_dir_request__descriptor, "{\"depth\":4294967296}",
                      "invalid value for field 'depth': value out of range for uint32");
    ASSERT_DECODE_ERR(&filesystem__list_dir_request__descriptor, "{\"depth\":-1}", "out of range");
    ASSERT_DECODE_ERR(&filesystem__list_dir_request__descriptor, "{\"depth\":0.5}", "fractional");
    ASSERT_DECODE_ERR(&filesystem__list_dir_request__descriptor, "{\"depth\":\"x\"}",
                      "expected uint32, got string 'x'");

    Process__ProcessEvent__EndEvent *e = decode_ok(&process__process_event__end_event__descriptor,
                                                   "{\"exitCode\":\"-2147483648\"}");
    ASSERT_EQ(e->exit_code, INT32_MIN);
    protobuf_c_message_free_unpacked(&e->base, NULL);
    ASSERT_DECODE_ERR(&process__process_event__end_event__descriptor, "{\"exitCode\":2147483648}",
                      "out of range for int32");
    ASSERT_DECODE_ERR(&process__process_event__end_event__descriptor, "{\"exitCode\":-2147483649}",
                      "out of range for int32");
}

TEST(wrong_types_name_the_field)
{
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"process\":{\"cmd\":5}}",
                      "invalid value for field 'process.cmd': expected string, got number");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"process\":{\"args\":[\"a\",null]}}",
                      "'process.args[1]'");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"process\":{\"args\":[\"a\",7]}}",
                      "'process.args[1]': expected string");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"process\":{\"args\":\"a\"}}",
                      "'process.args': expected array, got string");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"process\":{\"envs\":{\"A\":1}}}",
                      "'process.envs[\"A\"]': expected string");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"process\":{\"envs\":{\"A\":null}}}",
                      "'process.envs[\"A\"]'");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"process\":{\"envs\":[]}}",
                      "expected object, got array");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"stdin\":\"false\"}",
                      "'stdin': expected boolean, got string");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"process\":\"ls\"}",
                      "'process': expected object, got string");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"pty\":{\"size\":{\"cols\":-3}}}",
                      "'pty.size.cols'");
}

TEST(bad_documents)
{
    char *e = decode_err(&process__start_request__descriptor, "", 0);
    ASSERT_STR_EQ(e, "invalid JSON: empty body");
    free(e);
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "[]",
                      "expected an object at the top level");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"a\":1", "invalid JSON: ");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{} x", "invalid JSON: ");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "\"str\"", "invalid JSON: ");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, " ", "invalid JSON: ");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"tag\":\"\xff\"}", "invalid JSON: ");
    ASSERT_DECODE_ERR(&process__start_request__descriptor, "{\"tag\":\"\\ud800\"}",
                      "invalid JSON: ");
    /* The body is bounded by len, not by a NUL. */
    e = decode_err(&process__start_request__descriptor, "{}garbage", 3);
    free(e);
    Process__StartRequest *r;
    char *err = NULL;
    ASSERT_OK(pbjson_decode(&process__start_request__descriptor, "{}garbage", 2,
                            (ProtobufCMessage **) &r, &err));
    ASSERT_NULL(err);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* Errors are optional to receive. */
    ProtobufCMessage *m = NULL;
    ASSERT_ERR(pbjson_decode(&process__start_request__descriptor, "[", 1, &m, NULL), EINVAL);
    ASSERT_NULL(m);
}

TEST(nul_in_string_rejected)
{
    ASSERT_DECODE_ERR(&process__start_request__descriptor,
                      "{\"process\":{\"cmd\":\"ls\\u0000rm\"}}", "must not contain NUL");
    ASSERT_DECODE_ERR(&process__start_request__descriptor,
                      "{\"process\":{\"envs\":{\"A\\u0000B\":\"x\"}}}", "must not contain NUL");
    /* A raw NUL byte inside the body is not JSON at all. */
    static const char raw[] = "{\"tag\":\"a\0b\"}";
    char *e = decode_err(&process__start_request__descriptor, raw, sizeof(raw) - 1);
    ASSERT_TRUE(strncmp(e, "invalid JSON: ", 14) == 0);
    free(e);
}

TEST(deep_nesting_rejected)
{
    char json[256];
    /* {"x": + 31 arrays: 32 levels, the most allowed (unknown fields count too). */
    size_t n = 0;
    n += (size_t) snprintf(json + n, sizeof(json) - n, "{\"x\":");
    for (int i = 0; i < PBJSON_MAX_DEPTH - 1; i++)
        json[n++] = '[';
    for (int i = 0; i < PBJSON_MAX_DEPTH - 1; i++)
        json[n++] = ']';
    json[n++] = '}';
    json[n] = '\0';
    ProtobufCMessage *m = decode_ok(&filesystem__list_dir_request__descriptor, json);
    protobuf_c_message_free_unpacked(m, NULL);

    n = 0;
    n += (size_t) snprintf(json + n, sizeof(json) - n, "{\"x\":");
    for (int i = 0; i < PBJSON_MAX_DEPTH; i++)
        json[n++] = '[';
    for (int i = 0; i < PBJSON_MAX_DEPTH; i++)
        json[n++] = ']';
    json[n++] = '}';
    json[n] = '\0';
    ASSERT_DECODE_ERR(&filesystem__list_dir_request__descriptor, json, "nested deeper than 32");

    /* Brackets inside strings are not nesting. */
    ASSERT_JSON_ROUND_TRIP(
            &filesystem__list_dir_request__descriptor,
            "{\"path\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\"{{{{{{{{{{{{{{"
            "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\"}");

    /* Through real message nesting as well. */
    char deep[1024];
    n = 0;
    for (int i = 0; i < PBJSON_MAX_DEPTH + 1; i++)
        n += (size_t) snprintf(deep + n, sizeof(deep) - n, "{\"child\":");
    n += (size_t) snprintf(deep + n, sizeof(deep) - n, "{}");
    for (int i = 0; i < PBJSON_MAX_DEPTH + 1; i++)
        deep[n++] = '}';
    deep[n] = '\0';
    ASSERT_DECODE_ERR(&t_scalars_desc, deep, "nested deeper than 32");

    /* 31 children plus the top: exactly the limit, and all of it is freed again. */
    n = 0;
    for (int i = 0; i < PBJSON_MAX_DEPTH - 1; i++)
        n += (size_t) snprintf(deep + n, sizeof(deep) - n, "{\"child\":");
    n += (size_t) snprintf(deep + n, sizeof(deep) - n, "{\"i32\":7}");
    for (int i = 0; i < PBJSON_MAX_DEPTH - 1; i++)
        deep[n++] = '}';
    deep[n] = '\0';
    struct t_scalars *s = decode_ok(&t_scalars_desc, deep);
    int levels = 1;
    for (struct t_scalars *c = s; c->child; c = c->child)
        levels++;
    ASSERT_EQ(levels, PBJSON_MAX_DEPTH);
    char *out = encode(s);
    ASSERT_STR_EQ(out, deep);
    free(out);
    protobuf_c_message_free_unpacked(&s->base, NULL);
}

/* ---- bytes ---- */

TEST(bytes_base64)
{
    static const struct {
        const char *in;
        const char *bytes;
        size_t len;
    } ok[] = {
            {"aGkK", "hi\n", 3},     {"aGk=", "hi", 2},      {"aGk", "hi", 2},
            {"aA==", "h", 1},        {"aA", "h", 1},         {"", "", 0},
            {"-_8=", "\xfb\xff", 2}, {"-_8", "\xfb\xff", 2}, {"+/8", "\xfb\xff", 2},
            {"AAEC", "\0\1\2", 3},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char json[64];
        snprintf(json, sizeof(json), "{\"stdin\":\"%s\"}", ok[i].in);
        Process__ProcessInput *in = decode_ok(&process__process_input__descriptor, json);
        ASSERT_EQ(in->input_case, PROCESS__PROCESS_INPUT__INPUT_STDIN);
        ASSERT_UEQ(in->stdin.len, ok[i].len);
        if (ok[i].len > 0)
            ASSERT_MEM_EQ(in->stdin.data, ok[i].bytes, ok[i].len);
        else
            ASSERT_NULL(in->stdin.data);
        protobuf_c_message_free_unpacked(&in->base, NULL);
    }

    static const char *const bad[] = {"a",     "aGk=a", "aG=k",   "a===", "ab!c", "+-AA",
                                      "aGk==", "====",  "aGkK\n", "aA=",  "=AAA"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char json[64];
        snprintf(json, sizeof(json), "{\"pty\":\"%s\"}", bad[i]);
        if (bad[i][strlen(bad[i]) - 1] == '\n')
            snprintf(json, sizeof(json), "{\"pty\":\"aGkK\\n\"}");
        ASSERT_DECODE_ERR(&process__process_input__descriptor, json,
                          "invalid value for field 'pty': invalid base64");
    }

    /* Every length mod 3 encodes with padding and comes back. */
    uint8_t raw[7] = {0xff, 0x00, 0x80, 0x7f, 0x01, 0xfe, 0x10};
    static const char *const want[] = {"",         "/w==",     "/wA=",     "/wCA",
                                       "/wCAfw==", "/wCAfwE=", "/wCAfwH+", "/wCAfwH+EA=="};
    for (size_t n = 0; n <= sizeof(raw); n++) {
        Process__ProcessInput in = PROCESS__PROCESS_INPUT__INIT;
        in.input_case = PROCESS__PROCESS_INPUT__INPUT_PTY;
        in.pty.data = raw;
        in.pty.len = n;
        char expect[64];
        snprintf(expect, sizeof(expect), "{\"pty\":\"%s\"}", want[n]);
        ASSERT_ENCODES(&in, expect);
        ASSERT_JSON_ROUND_TRIP(&process__process_input__descriptor, expect);
    }
}

/* ---- strings ---- */

TEST(string_escaping)
{
    Process__ProcessEvent__EndEvent e = PROCESS__PROCESS_EVENT__END_EVENT__INIT;
    e.status = "q\" b\\ n\n t\t c\x01 d\x7f é € 𝄞 /";
    ASSERT_ENCODES(&e, "{\"status\":\"q\\\" b\\\\ n\\n t\\t c\\u0001 d\x7f é € 𝄞 /\"}");

    /* Invalid UTF-8 (a file name, say) still gives valid JSON: U+FFFD per bad byte. */
    e.status = "a\xff"
               "b\xc3(\xed\xa0\x80";
    ASSERT_ENCODES(&e, "{\"status\":\"a\xef\xbf\xbd"
                       "b\xef\xbf\xbd("
                       "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"}");

    /* And decoding the escapes gives the original bytes back. */
    Process__ProcessEvent__EndEvent *d =
            decode_ok(&process__process_event__end_event__descriptor,
                      "{\"status\":\"q\\\" b\\\\ n\\n t\\t c\\u0001 \\u00e9 \\ud834\\udd1e \\/\"}");
    ASSERT_STR_EQ(d->status, "q\" b\\ n\n t\t c\x01 é 𝄞 /");
    protobuf_c_message_free_unpacked(&d->base, NULL);
}

/* ---- maps ---- */

TEST(map_round_trip)
{
    Process__ProcessConfig *c = decode_ok(
            &process__process_config__descriptor,
            "{\"cmd\":\"env\",\"envs\":{\"A\":\"1\",\"B\":\"\",\"PATH\":\"/bin:/usr/bin\"}}");
    ASSERT_UEQ(c->n_envs, 3);
    ASSERT_STR_EQ(c->envs[0]->key, "A");
    ASSERT_STR_EQ(c->envs[0]->value, "1");
    ASSERT_STR_EQ(c->envs[1]->key, "B");
    ASSERT_STR_EQ(c->envs[1]->value, "");
    ASSERT_STR_EQ(c->envs[2]->key, "PATH");
    ASSERT_STR_EQ(c->envs[2]->value, "/bin:/usr/bin");
    /* Map values are written even when empty. */
    ASSERT_ENCODES(
            c, "{\"cmd\":\"env\",\"envs\":{\"A\":\"1\",\"B\":\"\",\"PATH\":\"/bin:/usr/bin\"}}");

    /* The same message through the binary codec. */
    struct buf b;
    buf_init(&b, TEST_BUF_MAX);
    ASSERT_OK(pbproto_encode(&c->base, &b));
    ProtobufCMessage *m;
    char *err;
    ASSERT_OK(proto_decode(&process__process_config__descriptor, b.data, b.len, &m, &err));
    ASSERT_NULL(err);
    ASSERT_ENCODES(
            m, "{\"cmd\":\"env\",\"envs\":{\"A\":\"1\",\"B\":\"\",\"PATH\":\"/bin:/usr/bin\"}}");
    protobuf_c_message_free_unpacked(m, NULL);
    buf_free(&b);
    protobuf_c_message_free_unpacked(&c->base, NULL);

    ASSERT_JSON_ROUND_TRIP(&process__process_config__descriptor, "{}");
    Process__ProcessConfig *empty =
            decode_ok(&process__process_config__descriptor, "{\"envs\":{},\"args\":[]}");
    ASSERT_UEQ(empty->n_envs, 0);
    ASSERT_UEQ(empty->n_args, 0);
    ASSERT_ENCODES(empty, "{}");
    protobuf_c_message_free_unpacked(&empty->base, NULL);
}

TEST(map_integer_keys)
{
    struct t_scalars *s =
            decode_ok(&t_scalars_desc, "{\"ikeys\":{\"1\":\"a\",\"-2\":\"b\",\"0\":\"\"}}");
    ASSERT_UEQ(s->n_ikeys, 3);
    ASSERT_EQ(s->ikeys[0]->key, 1);
    ASSERT_STR_EQ(s->ikeys[0]->value, "a");
    ASSERT_EQ(s->ikeys[1]->key, -2);
    ASSERT_EQ(s->ikeys[2]->key, 0);
    ASSERT_ENCODES(s, "{\"ikeys\":{\"1\":\"a\",\"-2\":\"b\",\"0\":\"\"}}");
    protobuf_c_message_free_unpacked(&s->base, NULL);

    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"ikeys\":{\"1\":\"a\",\"x\":\"b\"}}",
                      "'ikeys[\"x\"]': expected int32, got string 'x'");
    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"ikeys\":{\"2147483648\":\"b\"}}", "out of range");
}

/* ---- Timestamp ---- */

TEST(timestamp_encode_digits)
{
    static const struct {
        int64_t s;
        int32_t n;
        const char *want;
    } cases[] = {
            {EXAMPLE_MTIME, 0, "2026-08-22T10:00:00Z"},
            {EXAMPLE_MTIME, 123000000, "2026-08-22T10:00:00.123Z"},
            {EXAMPLE_MTIME, 123456000, "2026-08-22T10:00:00.123456Z"},
            {EXAMPLE_MTIME, 123456789, "2026-08-22T10:00:00.123456789Z"},
            {EXAMPLE_MTIME, 1, "2026-08-22T10:00:00.000000001Z"},
            {EXAMPLE_MTIME, 100000000, "2026-08-22T10:00:00.100Z"},
            {EXAMPLE_MTIME, 1000, "2026-08-22T10:00:00.000001Z"},
            {0, 0, "1970-01-01T00:00:00Z"},
            {-1, 0, "1969-12-31T23:59:59Z"},
            {-1, 999999999, "1969-12-31T23:59:59.999999999Z"},
            {1709164800, 0, "2024-02-29T00:00:00Z"},
            {-62135596800LL, 0, "0001-01-01T00:00:00Z"},
            {253402300799LL, 999999999, "9999-12-31T23:59:59.999999999Z"},
            /* Out of range: clamped rather than failing the whole response. */
            {253402300800LL, 0, "9999-12-31T23:59:59.999999999Z"},
            {-62135596801LL, 5, "0001-01-01T00:00:00Z"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
        ts.seconds = cases[i].s;
        ts.nanos = cases[i].n;
        Filesystem__EntryInfo e = FILESYSTEM__ENTRY_INFO__INIT;
        e.modified_time = &ts;
        char want[96];
        snprintf(want, sizeof(want), "{\"modifiedTime\":\"%s\"}", cases[i].want);
        ASSERT_ENCODES(&e, want);
    }
}

TEST(timestamp_decode_offsets)
{
    static const struct {
        const char *in;
        int64_t s;
        int32_t n;
        const char *out;
    } cases[] = {
            {"2026-08-22T10:00:00Z", EXAMPLE_MTIME, 0, "2026-08-22T10:00:00Z"},
            {"2026-08-22T12:00:00.5+02:00", EXAMPLE_MTIME, 500000000, "2026-08-22T10:00:00.500Z"},
            {"2026-08-22T04:30:00.123456789-05:30", EXAMPLE_MTIME, 123456789,
             "2026-08-22T10:00:00.123456789Z"},
            {"2026-08-23T00:00:00+14:00", EXAMPLE_MTIME, 0, "2026-08-22T10:00:00Z"},
            {"2026-08-22T10:00:00.000+00:00", EXAMPLE_MTIME, 0, "2026-08-22T10:00:00Z"},
            {"2026-08-22T10:00:00.1234Z", EXAMPLE_MTIME, 123400000, "2026-08-22T10:00:00.123400Z"},
            {"0001-01-01T00:00:00Z", -62135596800LL, 0, "0001-01-01T00:00:00Z"},
            {"0001-01-01T00:30:00+00:30", -62135596800LL, 0, "0001-01-01T00:00:00Z"},
            {"9999-12-31T23:59:59.999999999Z", 253402300799LL, 999999999,
             "9999-12-31T23:59:59.999999999Z"},
            {"2024-02-29T00:00:00Z", 1709164800, 0, "2024-02-29T00:00:00Z"},
            {"1969-12-31T23:59:59.999Z", -1, 999000000, "1969-12-31T23:59:59.999Z"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[96], want[96];
        snprintf(json, sizeof(json), "{\"modifiedTime\":\"%s\"}", cases[i].in);
        snprintf(want, sizeof(want), "{\"modifiedTime\":\"%s\"}", cases[i].out);
        Filesystem__EntryInfo *e = decode_ok(&filesystem__entry_info__descriptor, json);
        ASSERT_NOT_NULL(e->modified_time);
        ASSERT_EQ(e->modified_time->seconds, cases[i].s);
        ASSERT_EQ(e->modified_time->nanos, cases[i].n);
        ASSERT_ENCODES(e, want);
        protobuf_c_message_free_unpacked(&e->base, NULL);
        ASSERT_JSON_ROUND_TRIP(&filesystem__entry_info__descriptor, want);
    }

    static const char *const bad[] = {
            "2026-08-22 10:00:00Z",
            "2026-08-22T10:00:00",
            "2026-08-22t10:00:00Z",
            "2026-08-22T10:00:00z",
            "2026-8-22T10:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-08-22T24:00:00Z",
            "2026-08-22T10:60:00Z",
            "2026-08-22T10:00:60Z",
            "2026-08-22T10:00:00.Z",
            "2026-08-22T10:00:00.1234567891Z",
            "2026-08-22T10:00:00+0200",
            "2026-08-22T10:00:00+24:00",
            "2026-08-22T10:00:00Z ",
            "0000-12-31T00:00:00Z",
            "+2026-08-22T10:00:00Z",
            "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char json[96];
        snprintf(json, sizeof(json), "{\"modifiedTime\":\"%s\"}", bad[i]);
        ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor, json,
                          "invalid value for field 'modifiedTime': expected an RFC 3339");
    }
    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor,
                      "{\"modifiedTime\":\"0001-01-01T00:00:00+00:01\"}", "out of range");
    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor,
                      "{\"modifiedTime\":\"9999-12-31T23:59:59-00:01\"}", "out of range");
    ASSERT_DECODE_ERR(&filesystem__entry_info__descriptor, "{\"modified_time\":1787392800}",
                      "expected an RFC 3339 timestamp string, got number");
}

/* ---- floats and repeated scalars (test.Scalars) ---- */

TEST(floats)
{
    struct t_scalars *s = decode_ok(&t_scalars_desc, "{\"d\":0.1,\"f\":0.1}");
    ASSERT_TRUE(s->d == 0.1);
    ASSERT_TRUE(s->f == 0.1f);
    ASSERT_ENCODES(s, "{\"d\":0.1,\"f\":0.1}");
    protobuf_c_message_free_unpacked(&s->base, NULL);

    s = decode_ok(&t_scalars_desc, "{\"d\":\"NaN\",\"f\":\"-Infinity\"}");
    ASSERT_TRUE(isnan(s->d));
    ASSERT_TRUE(isinf(s->f) && s->f < 0);
    ASSERT_ENCODES(s, "{\"d\":\"NaN\",\"f\":\"-Infinity\"}");
    protobuf_c_message_free_unpacked(&s->base, NULL);

    s = decode_ok(&t_scalars_desc, "{\"d\":\"Infinity\",\"f\":\"1.5\"}");
    ASSERT_TRUE(isinf(s->d) && s->d > 0);
    ASSERT_TRUE(s->f == 1.5f);
    protobuf_c_message_free_unpacked(&s->base, NULL);

    ASSERT_JSON_ROUND_TRIP(&t_scalars_desc, "{\"d\":1e+100,\"f\":3.4028235e+38}");
    ASSERT_JSON_ROUND_TRIP(&t_scalars_desc, "{\"d\":-2.5,\"f\":1e-07}");
    ASSERT_JSON_ROUND_TRIP(&t_scalars_desc, "{\"d\":0.30000000000000004}");
    ASSERT_JSON_ROUND_TRIP(&t_scalars_desc, "{\"d\":123456789}");
    /* -0 is not the default bit pattern, so it is written. */
    struct t_scalars z;
    t_scalars_init(&z.base);
    z.d = -0.0;
    ASSERT_ENCODES(&z, "{\"d\":-0}");

    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"f\":1e39}", "'f': value out of range for float");
    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"d\":\"nan\"}", "expected double, got string 'nan'");
    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"d\":\"1e999\"}", "out of range for double");
    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"d\":true}", "expected double, got boolean");
}

TEST(repeated_scalars_and_64bit)
{
    struct t_scalars *s =
            decode_ok(&t_scalars_desc, "{\"nums\":[1,\"2\",3.0,-4],\"flags\":[true,false],"
                                       "\"u64\":\"18446744073709551615\",\"sf64\":-7}");
    ASSERT_UEQ(s->n_nums, 4);
    ASSERT_EQ(s->nums[0], 1);
    ASSERT_EQ(s->nums[1], 2);
    ASSERT_EQ(s->nums[2], 3);
    ASSERT_EQ(s->nums[3], -4);
    ASSERT_UEQ(s->n_flags, 2);
    ASSERT_EQ(s->flags[0], 1);
    ASSERT_EQ(s->flags[1], 0);
    ASSERT_UEQ(s->u64, UINT64_MAX);
    ASSERT_EQ(s->sf64, -7);
    static const char want[] = "{\"u64\":\"18446744073709551615\",\"nums\":[1,2,3,-4],"
                               "\"flags\":[true,false],\"sf64\":\"-7\"}";
    ASSERT_ENCODES(s, want);

    /* Binary round trip of the same (packed repeated field, fixed64). */
    struct buf b;
    buf_init(&b, TEST_BUF_MAX);
    ASSERT_OK(pbproto_encode(&s->base, &b));
    ProtobufCMessage *m;
    char *err;
    ASSERT_OK(proto_decode(&t_scalars_desc, b.data, b.len, &m, &err));
    ASSERT_ENCODES(m, want);
    protobuf_c_message_free_unpacked(m, NULL);
    buf_free(&b);
    protobuf_c_message_free_unpacked(&s->base, NULL);

    ASSERT_JSON_ROUND_TRIP(&t_scalars_desc, want);
    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"nums\":[1,2,1.5]}", "'nums[2]'");
    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"flags\":[true,1]}", "'flags[1]': expected boolean");
    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"u64\":\"18446744073709551616\"}", "out of range");
    ASSERT_DECODE_ERR(&t_scalars_desc, "{\"u64\":-1}", "out of range for uint64");
}

TEST(encode_depth_and_cap)
{
    /* A (wrongly built) chain deeper than the limit is refused, not walked forever. */
    struct t_scalars chain[PBJSON_MAX_DEPTH + 2];
    for (size_t i = 0; i < sizeof(chain) / sizeof(chain[0]); i++) {
        t_scalars_init(&chain[i].base);
        chain[i].child = i + 1 < sizeof(chain) / sizeof(chain[0]) ? &chain[i + 1] : NULL;
    }
    struct buf b;
    buf_init(&b, TEST_BUF_MAX);
    ASSERT_OK(buf_append_str(&b, "prefix"));
    ASSERT_ERR(pbjson_encode(&chain[0].base, &b), E2BIG);
    /* The buffer is left as it was. */
    ASSERT_UEQ(b.len, 6);
    ASSERT_STR_EQ(b.data, "prefix");
    /* At the limit it works. */
    chain[PBJSON_MAX_DEPTH - 1].child = NULL;
    ASSERT_OK(pbjson_encode(&chain[0].base, &b));
    buf_free(&b);

    /* The buffer's cap is reported as -E2BIG, and leaves the buffer untouched too. */
    Filesystem__ListDirRequest r = FILESYSTEM__LIST_DIR_REQUEST__INIT;
    r.path = "a-rather-long-path-that-does-not-fit";
    buf_init(&b, 16);
    ASSERT_ERR(pbjson_encode(&r.base, &b), E2BIG);
    ASSERT_UEQ(b.len, 0);
    ASSERT_ERR(pbproto_encode(&r.base, &b), E2BIG);
    ASSERT_UEQ(b.len, 0);
    r.path = "ok";
    ASSERT_OK(pbjson_encode(&r.base, &b));
    ASSERT_STR_EQ(b.data, "{\"path\":\"ok\"}");
    buf_free(&b);

    /* Large bytes go straight into the buffer. */
    static uint8_t big[100000];
    memset(big, 0xab, sizeof(big));
    Process__ProcessInput in = PROCESS__PROCESS_INPUT__INIT;
    in.input_case = PROCESS__PROCESS_INPUT__INPUT_STDIN;
    in.stdin.data = big;
    in.stdin.len = sizeof(big);
    buf_init(&b, TEST_BUF_MAX);
    ASSERT_OK(pbjson_encode(&in.base, &b));
    ASSERT_UEQ(b.len, STRLEN("{\"stdin\":\"\"}") + (sizeof(big) + 2) / 3 * 4);
    Process__ProcessInput *back;
    char *err = NULL;
    ASSERT_OK(pbjson_decode(&process__process_input__descriptor, b.data, b.len,
                            (ProtobufCMessage **) &back, &err));
    ASSERT_UEQ(back->stdin.len, sizeof(big));
    ASSERT_MEM_EQ(back->stdin.data, big, sizeof(big));
    protobuf_c_message_free_unpacked(&back->base, NULL);
    buf_free(&b);
}

TEST(json_round_trip_property)
{
    static const struct {
        const ProtobufCMessageDescriptor *desc;
        const char *json;
    } cases[] = {
            {&process__start_request__descriptor,
             "{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\",\"echo hi\"],"
             "\"envs\":{\"A\":\"1\"},\"cwd\":\"/"
             "tmp\"},\"pty\":{\"size\":{\"cols\":80,\"rows\":24}},"
             "\"tag\":\"t\",\"stdin\":true}"},
            {&process__start_request__descriptor, "{\"process\":{\"cmd\":\"\\u0001\\n\"}}"},
            {&process__list_response__descriptor,
             "{\"processes\":[{\"config\":{\"cmd\":\"sleep\",\"args\":[\"10\"]},\"pid\":7,"
             "\"tag\":\"x\"},{\"pid\":8}]}"},
            {&process__connect_response__descriptor,
             "{\"event\":{\"end\":{\"exitCode\":-1,\"status\":\"signal: killed\","
             "\"error\":\"signal: killed\"}}}"},
            {&process__stream_input_request__descriptor,
             "{\"data\":{\"input\":{\"pty\":\"BA==\"}}}"},
            {&process__send_input_request__descriptor,
             "{\"process\":{\"tag\":\"t\"},\"input\":{\"stdin\":\"aGkK\"}}"},
            {&process__update_request__descriptor, "{\"process\":{\"pid\":1},\"pty\":{}}"},
            {&filesystem__get_watcher_events_response__descriptor,
             "{\"events\":[{\"name\":\"a\",\"type\":\"EVENT_TYPE_CREATE\",\"entry\":{\"name\":"
             "\"a\","
             "\"type\":\"FILE_TYPE_DIRECTORY\",\"size\":\"4096\",\"mode\":493,"
             "\"modifiedTime\":\"2026-08-22T10:00:00.100Z\",\"metadata\":{\"k\":\"v\"}}},"
             "{\"name\":\"b\",\"type\":\"EVENT_TYPE_REMOVE\"}]}"},
            {&filesystem__watch_dir_request__descriptor,
             "{\"path\":\"/\",\"recursive\":true,\"includeEntry\":true,"
             "\"allowNetworkMounts\":true}"},
            {&filesystem__create_watcher_response__descriptor, "{\"watcherId\":\"w123\"}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        ASSERT_JSON_ROUND_TRIP(cases[i].desc, cases[i].json);

    /* Non-canonical input converges after one pass. */
    Process__StartRequest *r =
            decode_ok(&process__start_request__descriptor,
                      " { \"stdin\" : true , \"process\" : { \"cmd\" : \"x\" , \"unknown\" : 1 } , "
                      "\"tag\" : \"\\u0074\" } ");
    ASSERT_ENCODES(r, "{\"process\":{\"cmd\":\"x\"},\"tag\":\"t\",\"stdin\":true}");
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* ---- binary codec ---- */

TEST(pbproto_round_trip)
{
    Process__ProcessConfig__EnvsEntry e1 = PROCESS__PROCESS_CONFIG__ENVS_ENTRY__INIT;
    e1.key = "LANG";
    e1.value = "C.UTF-8";
    Process__ProcessConfig__EnvsEntry *envs[] = {&e1};
    char *args[] = {"-c", "echo héllo"};
    Process__ProcessConfig cfg = PROCESS__PROCESS_CONFIG__INIT;
    cfg.cmd = "/bin/sh";
    cfg.n_args = 2;
    cfg.args = args;
    cfg.n_envs = 1;
    cfg.envs = envs;
    cfg._cwd_case = PROCESS__PROCESS_CONFIG___CWD_CWD;
    cfg.cwd = "/tmp";
    Process__PTY__Size size = PROCESS__PTY__SIZE__INIT;
    size.cols = 120;
    size.rows = 40;
    Process__PTY pty = PROCESS__PTY__INIT;
    pty.size = &size;
    Process__StartRequest req = PROCESS__START_REQUEST__INIT;
    req.process = &cfg;
    req._pty_case = PROCESS__START_REQUEST___PTY_PTY;
    req.pty = &pty;
    req._stdin_case = PROCESS__START_REQUEST___STDIN_STDIN;
    req.stdin = 0;

    struct buf b;
    buf_init(&b, TEST_BUF_MAX);
    ASSERT_OK(buf_append_str(&b, "xx"));
    ASSERT_OK(pbproto_encode(&req.base, &b));
    ASSERT_UEQ(b.len, 2 + protobuf_c_message_get_packed_size(&req.base));

    Process__StartRequest *back;
    char *err;
    ASSERT_OK(proto_decode(&process__start_request__descriptor, b.data + 2, b.len - 2,
                           (ProtobufCMessage **) &back, &err));
    ASSERT_NULL(err);
    ASSERT_STR_EQ(back->process->cmd, "/bin/sh");
    ASSERT_STR_EQ(back->process->args[1], "echo héllo");
    ASSERT_STR_EQ(back->process->envs[0]->value, "C.UTF-8");
    ASSERT_STR_EQ(back->process->cwd, "/tmp");
    ASSERT_UEQ(back->pty->size->cols, 120);
    ASSERT_EQ(back->_stdin_case, PROCESS__START_REQUEST___STDIN_STDIN);
    ASSERT_EQ(back->stdin, 0);

    char *j1 = encode(&req), *j2 = encode(back);
    ASSERT_STR_EQ(j1, j2);
    ASSERT_STR_EQ(j1, "{\"process\":{\"cmd\":\"/bin/sh\",\"args\":[\"-c\",\"echo héllo\"],"
                      "\"envs\":{\"LANG\":\"C.UTF-8\"},\"cwd\":\"/tmp\"},"
                      "\"pty\":{\"size\":{\"cols\":120,\"rows\":40}},\"stdin\":false}");
    free(j1);
    free(j2);
    protobuf_c_message_free_unpacked(&back->base, NULL);
    buf_free(&b);

    /* An empty body is the empty message. */
    ProtobufCMessage *m;
    ASSERT_OK(proto_decode(&process__start_request__descriptor, "", 0, &m, &err));
    ASSERT_ENCODES(m, "{}");
    protobuf_c_message_free_unpacked(m, NULL);
}

TEST(pbproto_rejects_nul_and_bad_utf8)
{
    /* StartRequest{process: ProcessConfig{cmd: "ls\0rm"}} */
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x0a\x07\x0a\x05ls\0rm",
                     "invalid value for field 'process.cmd': string contains NUL");
    /* ... {args: ["ok", "\xff"]} */
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x0a\x07\x12\x02ok\x12\x01\xff",
                     "invalid value for field 'process.args[1]': string is not valid UTF-8");
    /* ... {envs: {"A": "\xc0\x80"}} (an overlong NUL) */
    ASSERT_PROTO_ERR(&process__start_request__descriptor,
                     "\x0a\x09\x1a\x07\x0a\x01"
                     "A\x12\x02\xc0\x80",
                     "'process.envs[0].value': string is not valid UTF-8");
    /* ... {cwd: surrogate U+D800} */
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x0a\x05\x22\x03\xed\xa0\x80",
                     "'process.cwd'");
    /* tag (field 3, a proto3 optional) above U+10FFFF, and truncated sequences */
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x1a\x04\xf4\x90\x80\x80", "'tag'");
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x1a\x02\xe2\x82", "'tag'");
    /* A NUL in a string that protobuf-c keeps last still counts: every occurrence is checked. */
    ASSERT_PROTO_ERR(&process__start_request__descriptor,
                     "\x1a\x02"
                     "a\0\x1a\x01"
                     "b",
                     "'tag'");
    /* Deeper: ListResponse.processes[1].config.envs[0].key */
    ASSERT_PROTO_ERR(&process__list_response__descriptor,
                     "\x0a\x02\x10\x01"
                     "\x0a\x07\x0a\x05\x1a\x03\x0a\x01\x00",
                     "'processes[1].config.envs[0].key': string contains NUL");
    /* Malformed wire data. */
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x0a\x05\x0a", "invalid protobuf");
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x0a", "invalid protobuf");
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x08\x01", "invalid protobuf");
    /* Field 0 in an overlong tag, which protobuf-c alone would keep as an unknown field. */
    ASSERT_PROTO_ERR(&process__start_request__descriptor, "\x80\x00\x01",
                     "invalid protobuf: field number 0");

    /* Valid UTF-8 (up to 4 bytes) passes; NUL in bytes fields is fine; unknown fields too. */
    static const char good[] = "\x0a\x0d\x0a\x0b"
                               "a\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e"
                               "z"
                               "\xfa\x01\x02\x00\xff";
    ProtobufCMessage *m;
    char *err;
    ASSERT_OK(proto_decode(&process__start_request__descriptor, good, sizeof(good) - 1, &m, &err));
    ASSERT_STR_EQ(((Process__StartRequest *) m)->process->cmd, "aé€𝄞z");
    protobuf_c_message_free_unpacked(m, NULL);

    static const char bytes_nul[] = "\x0a\x03\x00\x01\x00";
    ASSERT_OK(proto_decode(&process__process_input__descriptor, bytes_nul, sizeof(bytes_nul) - 1,
                           &m, &err));
    ASSERT_UEQ(((Process__ProcessInput *) m)->stdin.len, 3);
    protobuf_c_message_free_unpacked(m, NULL);

    /* Without ret_error the failure still comes back. */
    ASSERT_ERR(pbproto_decode(&process__start_request__descriptor, (const uint8_t *) "\x1a\x01\xff",
                              3, &m, NULL),
               EINVAL);
}

TEST_MAIN()
