/* A program built against an installed afsm, as a user would build one. */
#include <afsm.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    afsm_engine *engine;
    afsm_config cfg = AFSM_CONFIG_INIT;
    cfg.reaper = AFSM_REAPER_MANUAL;
    if (afsm_engine_open(&cfg, &engine) != AFSM_OK)
        return 1;
    afsm_create_options o = AFSM_CREATE_OPTIONS_INIT;
    o.user_id = "installed";
    o.user_id_len = strlen(o.user_id);
    o.client_ip = "127.0.0.1";
    o.client_ip_len = strlen(o.client_ip);
    afsm_uuid_v7(&o.connection_id);
    afsm_session_info s = AFSM_SESSION_INFO_INIT;
    afsm_status st = afsm_session_create(engine, &o, &s);
    printf("afsm %s: create %s, user %s\n", afsm_version(), afsm_status_name(st), s.user_id);
    afsm_engine_close(engine);
    return st == AFSM_OK && strcmp(afsm_version(), AFSM_VERSION) == 0 ? 0 : 1;
}
