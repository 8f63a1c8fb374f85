# cmake -DINPUT=file -DOUTPUT=header [-DNAME=kSchemaText] [-DNAMESPACE=serve::wire] -P EmbedText.cmake
# Writes a header holding INPUT's text as `inline constexpr char NAME[]` in NAMESPACE.
if(NOT DEFINED NAME)
  set(NAME kSchemaText)
endif()
if(NOT DEFINED NAMESPACE)
  set(NAMESPACE serve::wire)
endif()
file(READ ${INPUT} content)
set(delimiter "serve_embedded_")
file(WRITE ${OUTPUT} "#pragma once\n// Generated from ${INPUT}; do not edit.\nnamespace ${NAMESPACE} {\n"
     "inline constexpr char ${NAME}[] = R\"${delimiter}(${content})${delimiter}\";\n}\n")
