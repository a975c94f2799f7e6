module afsm.dev/afsm

go 1.19
