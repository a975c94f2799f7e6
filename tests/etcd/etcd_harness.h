/*
 * etcd_harness.h: real etcd members (Debian's /usr/bin/etcd) for the etcd
 * store's tests, on 127.0.0.1 only, on free ports, with their data in a
 * temporary directory.
 *
 * Every member is a child process that dies with the test (PR_SET_PDEATHSIG)
 * and is killed by harness_stop_all (cmocka group teardown, and atexit) even
 * when a test failed; the data directories are removed there too. Waits are
 * polls with deadlines, never fixed sleeps.
 */
#ifndef AFSM_ETCD_HARNESS_H
#define AFSM_ETCD_HARNESS_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd/client.h"

#define HARNESS_MEMBERS_MAX 3

typedef struct harness_member {
    pid_t pid; /* 0: not running */
    int client_port, peer_port;
    char name[16];
    char data_dir[256];
} harness_member;

typedef struct harness {
    harness_member members[HARNESS_MEMBERS_MAX];
    int count;
    char root[128]; /* the temp directory holding every member's data */
    char endpoints[HARNESS_MEMBERS_MAX * 40];
    /* TLS (harness_make_certs): clients must present a certificate. */
    int tls;
    char ca[200], server_cert[200], server_key[200], client_cert[200], client_key[200];
} harness;

static harness *harness_current;

static inline uint64_t harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Pacing for polls (not synchronisation: every caller re-checks a condition). */
static inline void harness_nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline int harness_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    close(fd);
    return ntohs(a.sin_port);
}

static inline void harness_cluster_arg(const harness *h, char *out, size_t size)
{
    out[0] = '\0';
    for (int i = 0; i < h->count; i++) {
        char one[64];
        snprintf(one, sizeof(one), "%s%s=http://127.0.0.1:%d", i ? "," : "", h->members[i].name,
                 h->members[i].peer_port);
        strncat(out, one, size - strlen(out) - 1);
    }
}

/* Starts (or restarts, same ports and data) member i. */
static inline int harness_start_member(harness *h, int i, const char *state)
{
    harness_member *m = &h->members[i];
    char client[64], peer[64], cluster[256], log_path[300];
    snprintf(client, sizeof(client), "%s://127.0.0.1:%d", h->tls ? "https" : "http", m->client_port);
    snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", m->peer_port);
    harness_cluster_arg(h, cluster, sizeof(cluster));
    if (snprintf(log_path, sizeof(log_path), "%s.log", m->data_dir) >= (int)sizeof(log_path))
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (h->tls)
            execl("/usr/bin/etcd", "etcd", "--name", m->name, "--data-dir", m->data_dir, "--listen-client-urls", client,
                  "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                  "--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", h->root,
                  "--heartbeat-interval", "50", "--election-timeout", "500", "--cert-file", h->server_cert,
                  "--key-file", h->server_key, "--trusted-ca-file", h->ca, "--client-cert-auth", (char *)NULL);
        else
            execl("/usr/bin/etcd", "etcd", "--name", m->name, "--data-dir", m->data_dir, "--listen-client-urls", client,
                  "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                  "--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", h->root,
                  "--heartbeat-interval", "50", "--election-timeout", "500", (char *)NULL);
        _exit(127);
    }
    m->pid = pid;
    return 0;
}

/* Whether every thread of pid is stopped (SIGSTOP is delivered to each
 * thread on its way through the kernel: a running one may serve one more
 * request after kill() returned). */
static inline int harness_all_stopped(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    int stopped = 1;
    struct dirent *e;
    while (stopped && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char stat_path[400], buf[512];
        snprintf(stat_path, sizeof(stat_path), "%s/%s/stat", path, e->d_name);
        FILE *f = fopen(stat_path, "r");
        if (f == NULL)
            continue; /* the thread just exited */
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *close_paren = strrchr(buf, ')');
        stopped = close_paren != NULL && close_paren[1] == ' ' && (close_paren[2] == 'T' || close_paren[2] == 't');
    }
    closedir(d);
    return stopped;
}

static inline void harness_kill_member(harness *h, int i, int sig)
{
    harness_member *m = &h->members[i];
    if (m->pid <= 0)
        return;
    kill(m->pid, sig);
    if (sig == SIGSTOP) {
        uint64_t until = harness_now_ms() + 5000;
        while (!harness_all_stopped(m->pid) && harness_now_ms() < until)
            harness_nap_ms(1);
    }
    if (sig == SIGKILL || sig == SIGTERM) {
        waitpid(m->pid, NULL, 0);
        m->pid = 0;
    }
}

/* Whether member i (or, with i < 0, the cluster) answers a status request. */
static inline int harness_answers(harness *h, int i, uint64_t timeout_ms)
{
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "%s://127.0.0.1:%d", h->tls ? "https" : "http",
             h->members[i < 0 ? 0 : i].client_port);
    etcd_client_config cc = {
        .endpoints = i < 0 ? h->endpoints : endpoint, .dial_timeout_ms = 200, .request_timeout_ms = timeout_ms};
    if (h->tls) {
        cc.ca_file = h->ca;
        cc.cert_file = h->client_cert;
        cc.key_file = h->client_key;
    }
    etcd_client *c;
    if (etcd_client_open(&cc, &c) != AFSM_OK)
        return 0;
    /* A linearizable read: only true once the cluster has a leader. */
    json_object *body = json_tokener_parse("{\"key\":\"AA==\"}"), *reply = NULL;
    int ok = etcd_call(c, "/v3/kv/range", body, 1, &reply, NULL) == AFSM_OK;
    json_object_put(body);
    json_object_put(reply);
    etcd_client_close(c);
    return ok;
}

static inline int harness_wait_ready(harness *h, int i, uint64_t deadline_ms)
{
    while (harness_now_ms() < deadline_ms) {
        if (harness_answers(h, i, 500))
            return 1;
        harness_nap_ms(50);
    }
    return 0;
}

static inline void harness_stop_all(void)
{
    harness *h = harness_current;
    if (h == NULL)
        return;
    for (int i = 0; i < h->count; i++) {
        harness_kill_member(h, i, SIGKILL);
        char log_path[300];
        snprintf(log_path, sizeof(log_path), "%s.log", h->members[i].data_dir);
        unlink(log_path);
    }
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h->root);
    if (system(cmd) != 0)
        fprintf(stderr, "harness: could not remove %s\n", h->root);
    harness_current = NULL;
}

/* A CA, a server certificate for 127.0.0.1 and a client certificate, made
 * with openssl in dir. 0 on success. */
static inline int harness_make_certs(harness *h, const char *dir)
{
    snprintf(h->ca, sizeof(h->ca), "%s/ca.pem", dir);
    snprintf(h->server_cert, sizeof(h->server_cert), "%s/server.pem", dir);
    snprintf(h->server_key, sizeof(h->server_key), "%s/server-key.pem", dir);
    snprintf(h->client_cert, sizeof(h->client_cert), "%s/client.pem", dir);
    snprintf(h->client_key, sizeof(h->client_key), "%s/client-key.pem", dir);
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "(set -e; cd '%s';"
             "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=afsm-test-ca -keyout ca-key.pem -out ca.pem;"
             "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server-key.pem -out server.csr;"
             "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext;"
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 "
             "-extfile server.ext -out server.pem;"
             "openssl req -newkey rsa:2048 -nodes -subj /CN=afsm-client -keyout client-key.pem -out client.csr;"
             "printf 'extendedKeyUsage=clientAuth\\n' > client.ext;"
             "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 "
             "-extfile client.ext -out client.pem) >/dev/null 2>&1",
             dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Picks fresh ports for the n members and starts them; 0 once every member
 * answers a linearizable read (so each has joined and a leader exists)
 * before deadline_ms. */
static inline int harness_start_members(harness *h, int n, uint64_t deadline_ms)
{
    h->endpoints[0] = '\0';
    for (int i = 0; i < n; i++) {
        harness_member *m = &h->members[i];
        snprintf(m->name, sizeof(m->name), "m%d", i);
        /* The name again from i, not m->name: at -O0 GCC takes a field of
         * *h as a source overlapping the destination, also in *h, and a
         * Debug build's -Werror=restrict fails. */
        if (snprintf(m->data_dir, sizeof(m->data_dir), "%s/m%d", h->root, i) >= (int)sizeof(m->data_dir))
            return -1;
        m->client_port = harness_free_port();
        m->peer_port = harness_free_port();
        if (m->client_port <= 0 || m->peer_port <= 0 || m->client_port == m->peer_port)
            return -1;
        char one[48];
        snprintf(one, sizeof(one), "%s%s://127.0.0.1:%d", i ? "," : "", h->tls ? "https" : "http", m->client_port);
        strcat(h->endpoints, one);
    }
    for (int i = 0; i < n; i++)
        if (harness_start_member(h, i, "new") != 0)
            return -1;
    for (int i = 0; i < n; i++)
        if (!harness_wait_ready(h, i, deadline_ms))
            return -1;
    return 0;
}

/* Starts an n-member cluster (tls: https, client certificates required)
 * and waits until every member serves. A free port can be taken by
 * another process between harness_free_port and etcd's bind (tests run in
 * parallel): a cluster that then started short of a member would still
 * elect a leader and pass for ready, and lose its quorum as soon as a test
 * stops one member (seen once in CI: four three-member tests failed
 * waiting for a quorum that could not form). So a cluster whose members
 * do not all answer within 20 s is killed and started again on fresh
 * ports, three times at most. */
static inline int harness_start_tls(harness *h, int n, int tls)
{
    memset(h, 0, sizeof(*h));
    snprintf(h->root, sizeof(h->root), "/tmp/afsm-etcd-XXXXXX");
    if (mkdtemp(h->root) == NULL)
        return -1;
    h->tls = tls;
    if (tls && harness_make_certs(h, h->root) != 0)
        return -1;
    harness_current = h;
    static int registered;
    if (!registered) {
        atexit(harness_stop_all);
        registered = 1;
    }
    h->count = n;
    for (int attempt = 0; attempt < 3; attempt++) {
        if (harness_start_members(h, n, harness_now_ms() + 20000) == 0)
            return 0;
        fprintf(stderr, "harness: a %d-member etcd did not come up whole (attempt %d); starting it again\n", n,
                attempt + 1);
        for (int i = 0; i < n; i++) {
            harness_kill_member(h, i, SIGKILL);
            char cmd[600];
            if (snprintf(cmd, sizeof(cmd), "rm -rf '%s' '%s.log'", h->members[i].data_dir, h->members[i].data_dir) >=
                    (int)sizeof(cmd) ||
                system(cmd) != 0)
                fprintf(stderr, "harness: could not remove %s\n", h->members[i].data_dir);
        }
    }
    return -1;
}

static inline int harness_start(harness *h, int n)
{
    return harness_start_tls(h, n, 0);
}

#endif
