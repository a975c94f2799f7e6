# find_package(afsm) entry point: the exported target is afsm::afsm.
include("${CMAKE_CURRENT_LIST_DIR}/afsmTargets.cmake")
